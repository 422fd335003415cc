"""Hand-made study folders under issue 14's protocol, written the way `autoq search`
writes them: a search and a report split, KL beside perplexity, measured and predicted
speeds, one-shot plans (oneshot.json), optionally a latency objective."""

from __future__ import annotations

import json
from pathlib import Path

from autoq import study as contract
from autoq.quant import LayerConfig
from autoq.plan import Plan
from autoq.metrics import Target

PROTOCOL = "wikitext2 validation, 8 windows x 256 tokens (non-overlapping), ppl=exp(mean NLL)"
REPORT = "wikitext2 test, 16 windows x 256 tokens (non-overlapping), ppl=exp(mean NLL)"
LAYERS = [f"model.layers.{b}.mlp.{r}" for b in range(2) for r in ("up_proj", "down_proj")]


def point(size: float, ppl: float, **kw) -> dict:
    """A plan's metrics: size and ppl given, the rest derived unless given (kw)."""
    m = {"size_mib": size, "ppl": ppl, "kld": round((ppl - 20) / 50, 4),
         "bits_per_weight": size / 25, "tokens_per_s": 4000 / size,
         "speed_source": "predicted", "protocol": PROTOCOL}
    m.update({k: v for k, v in kw.items() if k != "report"})
    if kw.get("report", True) is not None:
        rp = ppl * 1.03
        m["report"] = {"ppl": rp, "kld": round((rp - 20) / 50, 4), "protocol": REPORT,
                       **(kw.get("report") if isinstance(kw.get("report"), dict) else {})}
    return m


def layers(i: int) -> dict:
    bits = (2, 3, 4, 8)
    return {n: {"nbits": bits[(i + k) % 4], "group_size": 64} for k, n in enumerate(LAYERS)}


def _plan(folder: Path, file: str, number: int, metrics: dict, model: str) -> None:
    cfg = {k: LayerConfig(**v) for k, v in layers(number).items()}
    Plan(model, cfg, None, metrics, {"trial": number}).save(folder / file)


def make(root: Path, name: str = "s", points: list[dict] | None = None, *,
         model: str = "m", task: str = "wikitext2", protocol: str = PROTOCOL,
         seq_len: int = 256, target: float = 26.0, objective: str | None = None,
         baselines: dict | None = None, oneshot: dict | None = None) -> Path:
    """A study folder: `points` (metrics, see point()) are its complete trials; the
    front (by size, or latency), pareto-NN.json, best.json and pareto.json follow
    from them as the search makes them."""
    folder = root / name
    folder.mkdir(parents=True)
    meta = {"format": contract.FORMAT, "study": name, "model": model, "task": task,
            "metric": "ppl", "higher_is_better": False, "target": target,
            "protocol": protocol, "speed_key": "tokens_per_s",
            "settings": {"seq_len": seq_len, "limit": None}}
    if objective is not None:
        meta["objective"] = objective
    (folder / contract.STUDY_FILE).write_text(json.dumps(meta))
    points = points if points is not None else [point(100 + 10 * i, 30 - 2 * i) for i in range(5)]
    goal = Target("ppl", target, False)
    for m in points:
        if "report" in m:
            m["report"]["meets_target"] = goal.reached(m["report"]["ppl"])
    records = [{"number": i, "state": "COMPLETE", "origin": "sampler", "layers": layers(i),
                "metrics": m} for i, m in enumerate(points)]
    (folder / contract.TRIALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    x = "latency_ms" if objective == "latency" else "size_mib"
    front = contract.front([(i, m) for i, m in enumerate(points)], goal, x=x)
    entries = []
    for k, i in enumerate(front):
        _plan(folder, contract.pareto_file(k), i, points[i], model)
        entries.append({"plan": contract.pareto_file(k), "number": i, "metrics": points[i]})
    best = contract.best([(i, m) for i, m in enumerate(points)], goal, lambda i: i, x=x)
    if best is not None:
        _plan(folder, contract.BEST_FILE, best, points[best], model)
    pareto = {"study": name, "protocol": protocol, "front": entries,
              "best": contract.BEST_FILE if best is not None else None}
    if objective is not None:
        pareto["objective"] = objective
    (folder / contract.PARETO_FILE).write_text(json.dumps(pareto))
    fp = {**point(500, 20.0, tokens_per_s=2.0, speed_source="measured"), "bits_per_weight": 16}
    (folder / contract.BASELINES_FILE).write_text(json.dumps(baselines if baselines is not None
                                                             else {"fp": fp}))
    if oneshot is not None:
        (folder / contract.ONESHOT_FILE).write_text(json.dumps(oneshot))
    return folder


def oneshot_entry(signal: str, budget: float, metrics: dict) -> dict:
    report = metrics.pop("report", None)
    entry = {"signal": signal, "budget_bits": budget, "layers": layers(0), "metrics": metrics}
    if report is not None:
        entry["report"] = report
    return entry


def oneshots(sizes_ppl: dict[str, tuple[float, float]]) -> dict:
    """label "signal@budget" -> (size, ppl): the oneshot.json of a study."""
    out = {}
    for label, (size, ppl) in sizes_ppl.items():
        signal, _, budget = label.partition("@")
        out[label] = oneshot_entry(signal, float(budget), point(size, ppl))
    return out
