"""Pure data steps behind every picture and table of `autoq report`.

Nothing here draws, prints or writes: a Study (read by load.py) goes in; Pareto
fronts, staircases, plot panels, bit-allocation matrices and table rows come
out (heatmap.py: bit-allocation matrices; rows.py: which configs to show and the
table rows). The drawers (draw_png.py, draw_html.py, tables.py) only turn these
into pictures, so a new plot is one data function plus one small drawing function.

Front rule (autoq/study.py, the same as the search's): a point dominates
another when it is at least as good in both objectives and strictly better in
one. Equal points do not dominate each other, so ties all stay on the front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..plan import FP
from ..study import front_of, number
from ..target import Target

METRIC_NAME = {"ppl": "perplexity", "accuracy": "top-1 accuracy"}
SPEED_UNIT = {"tokens_per_s": "tokens/s", "images_per_s": "images/s"}


def fmt_metric(metric: str, value: float | None, with_name: bool = True) -> str:
    if value is None:
        return "—"
    text = f"{value:.1%}" if metric == "accuracy" else f"{value:.2f}"
    return f"{metric} {text}" if with_name else text


# ---- the study, as read from a folder or a storage ---------------------------------
@dataclass
class Trial:
    number: int | None
    state: str                    # COMPLETE, PRUNED or FAIL
    origin: str                   # seed, sampler or uniform
    layers: dict                  # full module name -> {"nbits", "group_size"} or None (fp)
    metrics: dict
    plan: str | None = None       # plan file the search wrote for it (pareto-NN.json, best.json)
    duplicate_of: int | None = None  # same config as an earlier trial (not drawn twice)


@dataclass
class Study:
    name: str
    meta: dict                            # study.json (or the storage's "autoq" user attr)
    baselines: dict[str, dict]            # "fp", "4:64", ... -> metrics
    trials: list[Trial]
    front: list[Trial] | None = None      # the search's Pareto plans (pareto.json), if written
    best: Trial | None = None             # best.json, if written
    source: str = ""                      # folder or storage URL it was read from
    folder: Path | None = None

    @property
    def metric(self) -> str:
        return self.meta.get("metric", "ppl")

    @property
    def higher_is_better(self) -> bool:
        return bool(self.meta.get("higher_is_better", self.metric == "accuracy"))

    @property
    def target(self) -> float | None:
        return number(self.meta.get("target"))

    @property
    def goal(self) -> Target:
        """The study's quality target and size cap, as the search judged them."""
        return Target(self.metric, self.target, self.higher_is_better,
                      number(self.meta.get("max_size_mib")))

    @property
    def blocks(self) -> list[str] | None:
        """The model's block prefixes, as the search found them (None: older studies)."""
        blocks = (self.meta.get("structure") or {}).get("blocks")
        return blocks if isinstance(blocks, list) else None

    @property
    def speed_key(self) -> str:
        return self.meta.get("speed_key", "tokens_per_s")

    @property
    def fp_speed(self) -> float | None:
        return number(self.baselines.get(FP, {}).get(self.speed_key))

    def quality(self, metrics: Mapping) -> float | None:
        return number(metrics.get(self.metric))

    def complete(self) -> list[Trial]:
        """Finished trials with full metrics, each config once."""
        return [t for t in self.trials if t.state == "COMPLETE" and t.duplicate_of is None]

    def meets(self, metrics: Mapping) -> bool:
        """The quality target (and the study's size limit, if any)."""
        return self.goal.meets(metrics)


# ---- Pareto fronts (the rule lives in autoq/study.py, shared with the search) ----------
def staircase(points: Sequence[tuple[float, float]],
              maximize: tuple[bool, bool]) -> list[tuple[float, float]]:
    """The boundary of what a front reaches: between two neighbours (sorted by x) a
    corner at the worse value of each coordinate."""
    pts = sorted(points)
    out = pts[:1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        worse_x = min(x0, x1) if maximize[0] else max(x0, x1)
        worse_y = min(y0, y1) if maximize[1] else max(y0, y1)
        out += [(worse_x, worse_y), (x1, y1)]
    return out


# ---- plot panels: one x axis, quality on y, every study of one task --------------------
@dataclass(frozen=True)
class Axis:
    key: str                                          # file name part
    label: str                                        # with units; {unit} = speed unit
    maximize: bool
    value: Callable[[Mapping, Study], float | None]


def _speedup(m: Mapping, s: Study) -> float | None:
    speed, fp = number(m.get(s.speed_key)), s.fp_speed
    return speed / fp if speed is not None and fp else None


AXES = (
    Axis("size", "model size (MiB)", False, lambda m, s: number(m.get("size_mib"))),
    Axis("bits", "bits per weight of the quantized layers (incl. scales and zeros)", False,
         lambda m, s: number(m.get("bits_per_weight"))),
    Axis("speed", "speed ({unit}, batch 1)", True, lambda m, s: number(m.get(s.speed_key))),
    Axis("speedup", "speedup over the unquantized model (×)", True, _speedup),
)


@dataclass
class Point:
    x: float
    y: float
    trial: Trial


@dataclass
class Series:
    study: Study
    trials: list[Point]                       # every COMPLETE trial with both values
    front: list[Point]                        # non-dominated, sorted by x
    stairs: list[tuple[float, float]]
    uniform: list[tuple[str, float, float]]   # (label "4:64", x, y) reference points
    fp: tuple[float, float] | None


@dataclass
class Ref:
    """A reference point (a uniform config or fp) as drawn in one panel."""
    label: str          # "4:64" or "fp"
    x: float
    y: float            # the measured quality
    shown_y: float      # y kept inside the panel's range
    off: int            # 0 inside; +1 above the range, -1 below (drawn at the edge)
    text: str           # "4:64", or "2:32: ppl 112.40 ↑" when off the range


@dataclass
class Panel:
    task: str
    axis: Axis
    title: str
    subtitle: str            # protocol(s)
    x_label: str
    y_label: str
    metric: str
    log_y: bool
    y_range: tuple[float, float]
    series: list[Series] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)   # every study's, each point once
    note: str = ""           # e.g. which speeds are predicted

    @property
    def file_stem(self) -> str:
        return f"{self.task}-pareto-{self.axis.key}"


def series(study: Study, axis: Axis) -> Series:
    pts = []
    for t in study.complete():
        x, y = axis.value(t.metrics, study), study.quality(t.metrics)
        if x is not None and y is not None:
            pts.append(Point(x, y, t))
    on_front = [pts[i] for i in front_of([(p.x, p.y) for p in pts],
                                         (axis.maximize, study.higher_is_better))]
    refs = {label: (axis.value(m, study), study.quality(m)) for label, m in study.baselines.items()}
    uniform = [(label, x, y) for label, (x, y) in refs.items()
               if label != FP and x is not None and y is not None]
    fp = refs.get(FP)
    return Series(study, pts, on_front,
                  staircase([(p.x, p.y) for p in on_front],
                            (axis.maximize, study.higher_is_better)),
                  sorted(uniform, key=lambda u: u[1]),
                  fp if fp and None not in fp else None)


def y_range(ys: Sequence[float], log: bool) -> tuple[float, float]:
    """The range of `ys` with a 5 % margin (in log space on a log axis)."""
    lo, hi = min(ys), max(ys)
    if log:
        pad = (hi / lo) ** 0.05
        return lo / pad, hi * pad
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def _refs(ss: Sequence[Series], metric: str, data_range: tuple[float, float],
          rng: tuple[float, float], log: bool) -> list[Ref]:
    """Reference points, each once; one outside `rng` sits in the margin at that edge."""
    mid = (lambda a, b: math.sqrt(a * b)) if log else (lambda a, b: (a + b) / 2)
    edge = {1: mid(data_range[1], rng[1]), -1: mid(data_range[0], rng[0])}
    points = [(u, x, y) for s in ss for u, x, y in s.uniform] + \
        [(FP, *s.fp) for s in ss if s.fp]
    out: dict[tuple[str, float, float], Ref] = {}
    for label, x, y in points:
        off = 1 if y > rng[1] else -1 if y < rng[0] else 0
        arrow = "↑" if off > 0 else "↓"
        text = f"{label}: {fmt_metric(metric, y)} {arrow}" if off else label
        out.setdefault((label, x, y), Ref(label, x, y, edge.get(off, y), off, text))
    return list(out.values())


def _joined(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values if v))


def panels(studies: Sequence[Study]) -> list[Panel]:
    """Quality against each axis, one panel per task and axis that has any points.

    The y range covers the trials, fp and the targets; a reference point far outside
    it (say 2-bit, perplexity in the thousands) is drawn at the edge with its value."""
    out = []
    for task, group in group_by_task(studies).items():
        first = group[0]
        metric = first.metric
        unit = SPEED_UNIT.get(first.speed_key, first.speed_key)
        better = "higher" if first.higher_is_better else "lower"
        for axis in AXES:
            ss = [series(s, axis) for s in group]
            if not any(s.trials or s.uniform or s.fp for s in ss):
                continue
            core = [p.y for s in ss for p in s.trials] + [s.fp[1] for s in ss if s.fp] + \
                [t for s in group if (t := s.target) is not None]
            if not [p for s in ss for p in s.trials]:
                core += [y for s in ss for *_, y in s.uniform]
            log_y = metric == "ppl" and min(core) > 0 and max(core) / min(core) > 3
            rng = y_range(core, log_y)
            x_label = axis.label.format(unit=unit)
            predicted = axis.key in ("speed", "speedup") and any(
                p.trial.metrics.get("speed_source") == "predicted" for s in ss for p in s.trials)
            out.append(Panel(
                task, axis,
                title=f"{_joined(s.meta.get('model') for s in group)} · {task} — "
                      f"{METRIC_NAME.get(metric, metric)} vs {x_label.split(' (')[0]}",
                subtitle=_joined(s.meta.get("protocol") for s in group),
                x_label=x_label,
                y_label=f"{task} {METRIC_NAME.get(metric, metric)} ({better} is better"
                        f"{', log scale' if log_y else ''})",
                metric=metric, log_y=log_y, y_range=rng, series=ss,
                refs=_refs(ss, metric, (min(core), max(core)), rng, log_y),
                note="trial speeds are predicted by the latency model, except for the search's "
                     "Pareto configs and the reference points (measured)" if predicted else ""))
    return out


def group_by_task(studies: Sequence[Study]) -> dict[str, list[Study]]:
    groups: dict[str, list[Study]] = {}
    for s in studies:
        groups.setdefault(str(s.meta.get("task", "?")), []).append(s)
    return groups
