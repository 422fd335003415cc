"""Which configs a person looks at, and the rows of the tables: pure data.

A row is a dict, column name -> cell text, in the order of `columns(study)`: the plan
(its path as the user types it, ready for `autoq apply`), quality and KL on the search
split and, where the study has one, on the report split side by side, size,
bits/weight, speed ("(predicted)" when the latency model gave it) and speed-up.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Mapping

from ..quant import FP
from ..metrics import METRICS, fmt
from .data import (Study, Trial, best_trial, number, pareto_trials, same, source_of, speedup,
                   split_metrics)

PREDICTED = " (predicted)"


# ---- which configs a person looks at -----------------------------------------------------
def chosen(study: Study, limit: int | None = None) -> list[tuple[str, Trial]]:
    """(caption, trial) for the heatmaps: the best config, then the Pareto configs
    (at most `limit`, evenly spread along the front)."""
    best = best_trial(study)
    others = [t for t in pareto_trials(study) if t.layers and not same(t, best)]
    if limit is not None and len(others) > limit:
        others = [others[round(i * (len(others) - 1) / max(limit - 1, 1))] for i in range(limit)]
    out = [("best", best)] if best is not None and best.layers else []
    return out + [("Pareto", t) for t in others]


def caption(study: Study, kind: str, t: Trial) -> str:
    parts = [f"{kind}: {t.plan or f'trial {t.number}'}"]
    if t.plan and t.number is not None:
        parts.append(f"trial {t.number}")
    for metric in study.metrics_shown:
        if (q := study.quality(t.metrics, metric=metric)) is not None:
            parts.append(fmt(metric, q, True))
    for key in ("size_mib", "bits_per_weight"):
        if (v := number(t.metrics.get(key))) is not None:
            parts.append(fmt(key, v))
    return " · ".join(parts)


# ---- columns --------------------------------------------------------------------------
def has_report(study: Study) -> bool:
    return study.report_protocol() is not None


def quality_columns(study: Study) -> list[tuple[str, str, str]]:
    """(column name, metric, split) of the quality columns the study's numbers fill."""
    every = [t.metrics for t in pareto_trials(study)] + list(study.baselines.values())
    splits = ("search", "report") if has_report(study) else ("search",)
    out = []
    for metric in study.metrics_shown:
        for split in splits:
            if any(number(split_metrics(m, split).get(metric)) is not None for m in every):
                name = METRICS[metric].short
                out.append((f"{name} {split}" if len(splits) > 1 else name, metric, split))
    return out


def _latency(study: Study) -> bool:
    return any("latency_ms" in t.metrics for t in pareto_trials(study))


def columns(study: Study) -> list[str]:
    return Layout(study).columns



class Layout:
    """A study's table columns, worked out once."""

    def __init__(self, study: Study):
        self.quality = quality_columns(study)
        self.speed = METRICS[study.speed_key].unit
        self.latency = f"ms/{METRICS[study.speed_key].per}" if _latency(study) else None
        self.columns = ["plan", "trial", *(c for c, _, _ in self.quality), "size MiB",
                        "bits/weight", self.speed, "speedup vs fp",
                        *([self.latency] if self.latency else [])]


def _short(v: float | None, big: float, fmt: str) -> str:
    """`fmt` from `big` up, else 3 significant digits; — when missing."""
    return "—" if v is None else format(v, fmt) if abs(v) >= big else f"{v:.3g}"


def _speed_cell(text: str, m: Mapping, key: str) -> str:
    return text + (PREDICTED if text != "—" and source_of(m, key) == "predicted" else "")


def _row(study: Study, lay: Layout, label: str, trial: str, m: Mapping, best: bool = False,
         plan_row: bool = False) -> dict:
    size, bits = number(m.get("size_mib")), number(m.get("bits_per_weight"))
    speed, up = number(m.get(study.speed_key)), speedup(m, study)
    row = {"plan": label + (" ★" if best else ""), "trial": trial}
    for name, metric, split in lay.quality:
        value = study.quality(m, split, metric)
        cell = fmt(metric, value)
        if plan_row and split == "report" and metric == study.metric and value is not None:
            meets = split_metrics(m, "report").get("meets_target")
            if meets is False or (meets is None and not study.goal.reached(value)):
                cell += " ✗"    # misses the target on the report split
        row[name] = cell
    row["size MiB"] = _short(size, 10, ".1f")
    row["bits/weight"] = METRICS["bits_per_weight"].format(bits, unit=False)
    row[lay.speed] = _speed_cell(_short(speed, 100, ".0f"), m, study.speed_key)
    row["speedup vs fp"] = _speed_cell("—" if up is None else f"{up:.2f}×", m,
                                       study.speed_key)
    if lay.latency:
        row[lay.latency] = _speed_cell(_short(number(m.get("latency_ms")), 100, ".0f"), m,
                                       "latency_ms")
    return {c: row.get(c, "—") for c in lay.columns}


def front_rows(study: Study) -> list[dict]:
    """The Pareto configs, smallest (fastest) first; ★ marks the best config."""
    best, lay = best_trial(study), Layout(study)
    rows = sorted(pareto_trials(study),
                  key=lambda t: number(t.metrics.get(study.x_key)) or math.inf)
    return [_row(study, lay, study.plan_path(t.plan) or "—",
                 "" if t.number is None else str(t.number), t.metrics, same(t, best), True)
            for t in rows]


def baseline_rows(study: Study) -> list[dict]:
    """Uniform reference points and fp, smallest first."""
    lay = Layout(study)
    items = sorted(study.baselines.items(),
                   key=lambda kv: number(kv[1].get("size_mib")) or math.inf)
    return [_row(study, lay, label if label != FP else "fp (unquantized)", "", m)
            for label, m in items]


def split_notes(study: Study) -> list[str]:
    """The protocol of each split, one line each, for above a table."""
    out = [f"search split: {study.meta.get('protocol', '?')}"]
    if (p := study.report_protocol()) is not None:
        out.append(f"report split: {p} (the plans were chosen on the search split; ✗ = misses "
                   "the target on the report split" + _carried(study) + ")")
    return out


def _carried(study: Study) -> str:
    """The target as the report split was judged against (the same loss against fp)."""
    plans = study.front if study.front is not None else study.trials
    there = next((v for t in plans if isinstance(v := split_metrics(t.metrics, "report")
                                                 .get("target"), (int, float))), None)
    if there is None or there == study.goal.value:
        return ""
    return f", there {study.metric} {'≥' if study.goal.higher_is_better else '≤'} " \
        f"{there:.4g}: the same loss against fp"


def best_note(study: Study) -> str | None:
    """best.json's path, and whether it still meets the target on the report split."""
    best = best_trial(study)
    if best is None:
        return None
    text = study.plan_path(best.plan) or f"trial {best.number}"
    report = split_metrics(best.metrics, "report")
    meets = report.get("meets_target")
    if meets is None and (q := number(report.get(study.metric))) is not None:
        meets = study.goal.reached(q)
    if meets is not None:
        text += f" ({'meets' if meets else 'misses'} the target on the report split)"
    return text


def counts(study: Study) -> str:
    c = Counter(t.state for t in study.trials)
    return ", ".join(f"{c[s]} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if c[s]) \
        or "no trials yet"


def plan_files(study: Study) -> dict[int, str]:
    """Trial number -> the plan file(s) the search wrote for it, as the user types them."""
    out: dict[int, list[str]] = {}
    for t in [*(study.front or []), *([study.best] if study.best else [])]:
        if t.number is not None and t.plan:
            out.setdefault(t.number, []).append(study.plan_path(t.plan))
    return {n: ", ".join(files) for n, files in out.items()}
