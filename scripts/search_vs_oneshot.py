"""The search against autoq's one-shot knapsack at equal size (results/benchmarks/search-vs-oneshot/,
run by scripts/bench_search_vs_oneshot.sh).

    PYTHONPATH=. python scripts/search_vs_oneshot.py budgets --space SPACE --data VALID \\
        --bits 4.0,4.5,5.5 --out OUT/budgets.json     # the one-shot plans' exact sizes
    PYTHONPATH=. python scripts/search_vs_oneshot.py summary OUT   # summary.json, plot.png,
                                                                   # b*/trials.json

`budgets`: the one-shot sensitivity knapsack plan at each --bits (bits per searched
weight, as `autoq search --one-shot` makes it), quantized, its exact size measured (and
the knapsack's additive prediction beside it); a budget search then gets that size as
--max-size-mib, so its plan can be no larger than the one-shot plan. `summary`: per
budget study (OUT/b<bits>/), the one-shot and the searched plan (best.json) on the report
split, against fp; summary.json and the plot (report-split ppl against MiB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GOAL = 0.9   # the searched plan's excess ppl over fp is at most this share of the one-shot's


def problem(model: str, space: str, data: str, seq_len: int, limit: int, sensitivity: str,
            cache_dir: str | None = None):
    """(evaluator, choices, fixed layers, costs, bits) of a space on a model, with the
    sensitivities `autoq search` uses (cached in the folder `sensitivity`)."""
    from autoq.pipeline.evaluator import EvalSettings, Evaluator
    from autoq.quant.size import STORED_FLOAT_BYTES
    from autoq.search.prior import costs_and_bits
    from autoq.search.sensitivity import measure_or_load
    from autoq.search.space import load_space

    ev = Evaluator(EvalSettings(model=model, data=data, seq_len=seq_len, limit=limit,
                                cache_dir=cache_dir))
    choices, fixed = load_space(space).bind(ev.shapes, structure=ev.loaded.structure,
                                            ties=ev.loaded.quantized.tied_groups())
    sens = measure_or_load(ev, {n: c.options for c in choices for n in c.layers},
                           Path(sensitivity))
    costs, bits = costs_and_bits(choices, ev.shapes, sens, 8.0 * STORED_FLOAT_BYTES)
    return ev, choices, fixed, costs, bits


def resolved(choices, fixed, cfg: dict[str, str]) -> dict:
    from autoq.search.space import parse_option

    out = dict(fixed)
    for c in choices:
        out.update({n: parse_option(cfg[c.param], "plan") for n in c.layers})
    return out


def budgets(a) -> None:
    from autoq.search import knapsack
    from autoq.search.prior import MIB_BITS

    ev, choices, fixed, costs, bits = problem(a.model, a.space, a.data, a.seq_len, a.limit,
                                              a.sensitivity, a.cache_dir)
    weights = sum(ev.loaded.units()[n].weights for c in choices for n in c.stored)
    fp_mib = ev.apply({n: None for n in ev.shapes}).size_mib
    fp_searched = 16 * weights   # the searched matrices unquantized, 16 bits a weight
    out = {}
    for b in (float(x) for x in a.bits.split(",")):
        cfg = knapsack.at_budget(costs, bits, b * weights)
        predicted = fp_mib - (fp_searched - knapsack.totals(cfg, costs, bits)[1]) / MIB_BITS
        measured = ev.apply(resolved(choices, fixed, cfg)).size_mib
        out[f"{b:g}"] = {"bits": b, "max_size_mib": measured, "predicted_mib": predicted,
                         "params": cfg}
        print(f"{b:g} bits: {measured!r} MiB measured, {predicted!r} predicted", flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


def write_plan(study: Path, label: str, entry: dict) -> Path:
    """A one-shot plan of oneshot.json as a plan file (autoq.plan/2, for `autoq apply`)."""
    from autoq.plan import FORMAT, Plan

    info = json.loads((study / "study.json").read_text())
    plan = Plan.from_json({"format": FORMAT, "model": info["model"], "layers": entry["layers"],
                           "metrics": {**entry["metrics"], "report": entry["report"]},
                           "study": info["study"], "oneshot": label}, label)
    path = study / f"oneshot-{entry['signal']}.json"
    plan.save(path)
    return path


def rows(folder: Path) -> list[dict]:
    """One row per budget study (folder/b<bits>/)."""
    out = []
    for bits, entry in json.loads((folder / "budgets.json").read_text()).items():
        study = folder / f"b{bits}"
        oneshot = json.loads((study / "oneshot.json").read_text())
        label, one = next((k, v) for k, v in oneshot.items()   # the plan at this budget
                          if v["signal"] == "sensitivity" and k == f"sensitivity@{bits}")
        best = json.loads((study / "best.json").read_text())["metrics"]
        fp = json.loads((study / "baselines.json").read_text())["fp"]["report"]["ppl"]
        o, s = one["report"]["ppl"], best["report"]["ppl"]
        oneshot_plan = write_plan(study, label, one)
        repo = folder.parents[2]
        out.append({"bits": float(bits), "budget_mib": entry["max_size_mib"],
                    "oneshot_plan": str(oneshot_plan.relative_to(repo)),
                    "searched_plan": str((study / "best.json").relative_to(repo)),
                    "oneshot_size_mib": one["metrics"]["size_mib"],
                    "searched_size_mib": best["size_mib"],
                    "oneshot_report_ppl": o, "searched_report_ppl": s, "fp_report_ppl": fp,
                    "oneshot_search_ppl": one["metrics"]["ppl"], "searched_search_ppl": best["ppl"],
                    "excess_ratio": (s - fp) / (o - fp),
                    "goal_met": best["size_mib"] <= one["metrics"]["size_mib"]
                    and (s - fp) <= GOAL * (o - fp)})
    return out


def compact_trials(study: Path) -> None:
    """trials.jsonl (12 MB: every layer of every trial) as trials.json, the committed form:
    per trial its state, origin, score, size, share of the split scored, and its plan as one
    label per layer (in the order of "layers")."""
    rows = [json.loads(line) for line in (study / "trials.jsonl").read_text().splitlines()]
    names = list(rows[0]["layers"])

    def label(cfg):
        return "fp" if cfg is None else f"{cfg['nbits']}:{cfg['group_size']}"

    keep = ("ppl", "kld", "size_mib", "fraction", "eval_seconds")
    out = {"layers": names, "trials": [
        {"number": r["number"], "state": r["state"], "origin": r.get("origin"),
         **({"duplicate_of": r["duplicate_of"]} if "duplicate_of" in r else {}),
         **{k: r["metrics"][k] for k in keep if k in r["metrics"]},
         "plan": ",".join(label(r["layers"].get(n)) for n in names)} for r in rows]}
    (study / "trials.json").write_text(json.dumps(out, indent=0))


def plot(folder: Path, table: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    baselines = json.loads((folder / f"b{table[0]['bits']:g}" / "baselines.json").read_text())
    for label, m in baselines.items():
        if "report" in m and m["report"]["ppl"] < 60:
            ax.scatter(m["size_mib"], m["report"]["ppl"], marker="s", color="grey")
            ax.annotate(f"uniform {label}", (m["size_mib"], m["report"]["ppl"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    for i, row in enumerate(table):
        color = f"C{i}"
        study = folder / f"b{row['bits']:g}"
        front = [e["metrics"] for e in json.loads((study / "pareto.json").read_text())["front"]
                 if "report" in e["metrics"]]
        front.sort(key=lambda m: m["size_mib"])
        ax.plot([m["size_mib"] for m in front], [m["report"]["ppl"] for m in front], "o-",
                color=color, label=f"searched front, budget {row['budget_mib']:.1f} MiB")
        ax.scatter(row["oneshot_size_mib"], row["oneshot_report_ppl"], marker="x", s=80,
                   color=color, label=f"one-shot knapsack at {row['bits']:g} bits")
        ax.axvline(row["budget_mib"], color=color, lw=0.5, ls=":")
    ax.set_xlabel("size (MiB, whole model, unquantized tensors at 16 bits)")
    ax.set_ylabel("perplexity, report split (WikiText-2 test, first 160 windows of 512)")
    ax.set_title("SmolLM2-135M: searched (evolve, multi-fidelity) vs one-shot knapsack")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "plot.png", dpi=120)


def summary(a) -> None:
    folder = Path(a.folder).resolve()
    table = rows(folder)
    for row in table:
        compact_trials(folder / f"b{row['bits']:g}")
    (folder / "summary.json").write_text(json.dumps({"rows": table}, indent=1))
    plot(folder, table)
    for r in table:
        print(f"{r['budget_mib']:.2f} MiB: one-shot {r['oneshot_report_ppl']:.2f}, searched "
              f"{r['searched_report_ppl']:.2f} (fp {r['fp_report_ppl']:.2f}): excess ratio "
              f"{r['excess_ratio']:.3f}, goal {'met' if r['goal_met'] else 'missed'}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("budgets")
    b.add_argument("--model", default="smollm2")
    b.add_argument("--space", required=True)
    b.add_argument("--data", required=True)
    b.add_argument("--seq-len", type=int, default=512)
    b.add_argument("--limit", type=int, default=40)
    b.add_argument("--bits", default="4.0,4.5,5.5")
    b.add_argument("--sensitivity", required=True)
    b.add_argument("--cache-dir")
    b.add_argument("--out", required=True)
    s = sub.add_parser("summary")
    s.add_argument("folder")
    a = ap.parse_args(argv)
    (budgets if a.what == "budgets" else summary)(a)


if __name__ == "__main__":
    sys.exit(main())
