"""Which configs a person looks at, and the rows of the tables: pure data."""

from __future__ import annotations

import math
from collections import Counter
from typing import Mapping

from ..plan import FP
from ..study import best as best_of
from .data import AXES, SPEED_UNIT, Study, Trial, _speedup, fmt_metric, number, series

# ---- which configs a person looks at -----------------------------------------------------
def pareto_trials(study: Study) -> list[Trial]:
    """The search's Pareto plans (pareto.json); without them, the quality × size front."""
    if study.front is not None:
        return study.front
    return [p.trial for p in series(study, AXES[0]).front]


def best_trial(study: Study) -> Trial | None:
    """best.json; without it, as the search picks it: the smallest COMPLETE trial that
    meets the target (ties: the earlier trial)."""
    if study.best is not None:
        return study.best
    return best_of([(t, t.metrics) for t in study.complete()], study.goal,
                   number_of=lambda t: t.number)


def chosen(study: Study, limit: int | None = None) -> list[tuple[str, Trial]]:
    """(caption, trial) for the heatmaps: the best config, then the Pareto configs
    (at most `limit`, evenly spread along the front)."""
    best = best_trial(study)
    others = [t for t in pareto_trials(study) if t.layers and not _same(t, best)]
    if limit is not None and len(others) > limit:
        others = [others[round(i * (len(others) - 1) / max(limit - 1, 1))] for i in range(limit)]
    out = [("best", best)] if best is not None and best.layers else []
    return out + [("Pareto", t) for t in others]


def _same(a: Trial, b: Trial | None) -> bool:
    return b is not None and (a.number is not None and a.number == b.number
                              or a.layers == b.layers)


def caption(study: Study, kind: str, t: Trial) -> str:
    q = study.quality(t.metrics)
    parts = [f"{kind}: {t.plan or f'trial {t.number}'}"]
    if t.plan and t.number is not None:
        parts.append(f"trial {t.number}")
    if q is not None:
        parts.append(fmt_metric(study.metric, q))
    for key, unit in (("size_mib", "MiB"), ("bits_per_weight", "bits/weight")):
        if (v := number(t.metrics.get(key))) is not None:
            parts.append(f"{v:.1f} {unit}" if key == "size_mib" else f"{v:.2f} {unit}")
    return " · ".join(parts)


# ---- tables --------------------------------------------------------------------------------
COLUMNS = ("plan", "trial", "quality", "size MiB", "bits/weight", "speed", "speedup")


def _short(v: float | None, big: float, fmt: str) -> str:
    """`fmt` from `big` up, else 3 significant digits; — when missing."""
    return "—" if v is None else format(v, fmt) if abs(v) >= big else f"{v:.3g}"


def _row(study: Study, label: str, trial: str, m: Mapping, best: bool = False) -> dict:
    speed, speedup = number(m.get(study.speed_key)), _speedup(m, study)
    size, bits = number(m.get("size_mib")), number(m.get("bits_per_weight"))
    return {"plan": label + (" ★" if best else ""), "trial": trial,
            "quality": fmt_metric(study.metric, study.quality(m), with_name=False),
            "size MiB": _short(size, 10, ".1f"),
            "bits/weight": "—" if bits is None else f"{bits:.2f}",
            "speed": _short(speed, 100, ".0f"),
            "speedup": "—" if speedup is None else f"{speedup:.2f}×"}


def front_rows(study: Study) -> list[dict]:
    """The Pareto configs, smallest first; ★ marks the best config."""
    best = best_trial(study)
    rows = sorted(pareto_trials(study),
                  key=lambda t: number(t.metrics.get("size_mib")) or math.inf)
    return [_row(study, t.plan or "—", "" if t.number is None else str(t.number), t.metrics,
                 _same(t, best)) for t in rows]


def baseline_rows(study: Study) -> list[dict]:
    """Uniform reference points and fp, smallest first."""
    items = sorted(study.baselines.items(),
                   key=lambda kv: number(kv[1].get("size_mib")) or math.inf)
    return [_row(study, label if label != FP else "fp (unquantized)", "", m)
            for label, m in items]


def headers(study: Study) -> list[str]:
    unit = SPEED_UNIT.get(study.speed_key, study.speed_key)
    names = {"quality": study.metric, "speed": unit, "speedup": "speedup vs fp"}
    return [names.get(c, c) for c in COLUMNS]


def counts(study: Study) -> str:
    c = Counter(t.state for t in study.trials)
    return ", ".join(f"{c[s]} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if c[s]) \
        or "no trials yet"


def plan_files(study: Study) -> dict[int, str]:
    """Trial number -> the plan file(s) the search wrote for it."""
    out: dict[int, list[str]] = {}
    for t in [*(study.front or []), *([study.best] if study.best else [])]:
        if t.number is not None and t.plan:
            out.setdefault(t.number, []).append(t.plan)
    return {n: ", ".join(files) for n, files in out.items()}
