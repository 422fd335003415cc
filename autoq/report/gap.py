"""What the search buys over a plan made in one shot: pure data.

For each one-shot plan of a study (oneshot.json: the sensitivity and single-layer-KL
knapsacks at a few bit budgets), the best of the study's Pareto plans at a size no
larger than the one-shot plan's (for a latency study: a latency no larger), chosen on
the search split, and the quality difference on the search split and, where both were
scored on it, on the report split. Δ is front − one-shot: negative is better for
perplexity and KL, positive for accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..metrics import METRICS, fmt
from ..tasks import SPLITS
from .data import SIGNAL_NAME, Study, Trial, number, pareto_trials

EPS = 1e-9


@dataclass
class Gap:
    label: str                      # "sensitivity@4.5"
    signal: str
    budget: float | None
    oneshot: Mapping                # its metrics, the report split under "report"
    front: Trial | None             # the best Pareto plan no larger; None: none is
    quality: dict[str, tuple[float | None, float | None]]  # split -> (one-shot, front)

    def delta(self, split: str) -> float | None:
        a, b = self.quality.get(split, (None, None))
        return None if a is None or b is None else b - a


def key(study: Study) -> str:
    """The metrics key the gap is taken at: the study's objective (size_mib, or latency_ms
    when every one-shot plan has a latency too), else size_mib."""
    entries = [e["metrics"] for e in study.oneshot.values()
               if isinstance(e, Mapping) and isinstance(e.get("metrics"), Mapping)]
    if study.x_key != "size_mib" and entries and \
            all(number(m.get(study.x_key)) is not None for m in entries):
        return study.x_key
    return "size_mib"


def objective(study: Study) -> str:
    """"size" or "latency": what "equal" means in the gap table."""
    return "latency" if key(study) == "latency_ms" else "size"


def title(study: Study) -> str:
    return f"One-shot plans against the searched front, at equal {objective(study)}"


def explain(study: Study) -> str:
    return ("For each one-shot plan (a knapsack on one signal at a bit budget, no trials), the "
            f"best Pareto plan of this study at a {objective(study)} no larger, chosen on the "
            "search split; Δ = front − one-shot, on the search split and, where both were "
            "scored on it, the report split.")


def _entry_metrics(e: Mapping) -> dict:
    return {**e.get("metrics", {}), "report": e.get("report") or {}}


def gaps(study: Study) -> list[Gap]:
    """One Gap per one-shot plan, by signal then budget."""
    at = key(study)
    plans = [t for t in pareto_trials(study)
             if number(t.metrics.get(at)) is not None
             and study.quality(t.metrics) is not None]
    sign = 1.0 if study.higher_is_better else -1.0
    out = []
    order = list(SIGNAL_NAME)
    entries = sorted(((label, e) for label, e in study.oneshot.items()
                      if isinstance(e, Mapping) and isinstance(e.get("metrics"), Mapping)),
                     key=lambda le: (order.index(le[1].get("signal"))
                                     if le[1].get("signal") in order else len(order),
                                     number(le[1].get("budget_bits")) or 0.0, le[0]))
    for label, e in entries:
        m = _entry_metrics(e)
        x = number(m.get(at))
        fits = [t for t in plans if x is not None and t.metrics[at] <= x + EPS]
        front = max(fits, key=lambda t: (sign * study.quality(t.metrics), -t.metrics[at]),
                    default=None)
        quality = {split: (study.quality(m, split),
                           study.quality(front.metrics, split) if front else None)
                   for split in SPLITS}
        out.append(Gap(label, str(e.get("signal", "")), number(e.get("budget_bits")), m,
                       front, quality))
    return out


def fmt_delta(metric: str, d: float | None, base: float | None) -> str:
    if d is None:
        return "—"
    if metric == "accuracy":
        return f"{100 * d:+.2f} pts"
    rel = f" ({d / base:+.1%})" if base else ""
    return (f"{d:+.3g}" if metric == "kld" else f"{d:+.2f}") + rel


def columns(study: Study) -> list[str]:
    q = METRICS[study.metric].short
    x = "ms" if objective(study) == "latency" else "size MiB"
    cols = ["one-shot plan", "bits/weight", x, f"{q} search",
            f"front plan at ≤ that {objective(study)}", "front trial", f"front {x}",
            f"front {q} search", "Δ search"]
    if any(g.quality["report"][0] is not None for g in gaps(study)):
        cols += [f"{q} report", f"front {q} report", "Δ report"]
    return cols


def rows(study: Study) -> list[dict]:
    """The gap table, one row per one-shot plan (cells as text, columns(study) order)."""
    cols, out, at = columns(study), [], key(study)
    for g in gaps(study):
        m, f = g.oneshot, g.front
        x = number(m.get(at))
        fx = number(f.metrics.get(at)) if f else None
        cells = [g.label, _num(number(m.get("bits_per_weight")), ".2f"), _num(x, ".4g"),
                 fmt(study.metric, g.quality["search"][0]),
                 (study.plan_path(f.plan) or "—") if f else "none this small",
                 "—" if f is None or f.number is None else str(f.number), _num(fx, ".4g"),
                 fmt(study.metric, g.quality["search"][1]),
                 fmt_delta(study.metric, g.delta("search"), g.quality["search"][0]),
                 fmt(study.metric, g.quality["report"][0]),
                 fmt(study.metric, g.quality["report"][1]),
                 fmt_delta(study.metric, g.delta("report"), g.quality["report"][0])]
        out.append(dict(zip(cols, cells)))
    return out


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def summary(study: Study) -> list[str]:
    """One line per signal: the range of Δ over the budgets where a front plan fits."""
    out, every = [], gaps(study)
    for signal in dict.fromkeys(g.signal for g in every):
        gs = [g for g in every if g.signal == signal]
        parts = [f"{split} split {_span(study.metric, ds)}" for split in SPLITS
                 if (ds := [(d, g.quality[split][0]) for g in gs
                            if (d := g.delta(split)) is not None])]
        missing = sum(g.front is None for g in gs)
        line = f"{SIGNAL_NAME.get(signal, signal)}: Δ {METRICS[study.metric].short} " + \
            ("; ".join(parts) if parts else "—") + f" over {len(gs) - missing} budget(s)"
        if missing:
            line += f"; {missing} one-shot plan(s) smaller than every front plan"
        out.append(line)
    return out


def _span(metric: str, ds: list[tuple[float, float | None]]) -> str:
    """"-3.00 (-9.7%)" for one delta, the lowest and highest for several."""
    lo, hi = min(ds), max(ds)
    one, two = fmt_delta(metric, *lo), fmt_delta(metric, *hi)
    return one if one == two else f"{one} to {two}"
