"""Plot panels: pure data. One panel = one protocol group (data.groups), one quality
metric on y, one x axis (size, bits/weight, speed, speed-up, latency) and one split.

Two protocols never share a panel: the search split's numbers of a group are drawn on
its `<stem>-pareto-<axis>` panels; its plans' report-split numbers on `<stem>-report-
<axis>` panels of their own (one per report protocol). The axes zoom on the trials:
a reference point far outside (fp at 32 bits, 2-bit at perplexity 1000) is kept at
the edge of the panel with its value and an arrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ..quant import FP
from ..study import front_of
from ..metrics import METRICS, fmt
from .data import (SIGNAL_NAME, Study, Trial, best_trial, groups, number, on_cpu, pareto_trials,
                   source_of, speedup)

NEAR = 0.5      # a reference within half the trials' span of them widens the axis
PAD = 0.05      # margin around the data, in which far reference points sit
PREDICTED_NOTE = "hollow markers: {what} predicted by the latency model; filled: measured"
CPU_CAVEAT = ("CPU timing: noisy (shared cores), and HQQ's torch backend unpacks bits on every "
              "call; not a guide to GPU serving speed")


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


# ---- axes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    key: str                                          # file name part
    label: str                                        # {unit}, {per}: of the speed key
    maximize: bool
    value: Callable[[Mapping, Study], float | None]
    fmt: str = "{:.3g}"                               # a value in a label
    speed: str | None = None                          # "speed" / "latency": predicted or not

    def source(self, m: Mapping, s: Study) -> str | None:
        if self.speed is None:
            return None
        return source_of(m, "latency_ms" if self.speed == "latency" else s.speed_key)


AXES = (
    Axis("size", "model size (MiB)", False, lambda m, s: number(m.get("size_mib")), "{:.4g} MiB"),
    Axis("bits", "bits per weight of the quantized layers (incl. scales and zeros)", False,
         lambda m, s: number(m.get("bits_per_weight")), "{:.3g} bits"),
    Axis("speed", "speed ({unit}, batch 1)", True, lambda m, s: number(m.get(s.speed_key)),
         "{:.3g}/s", "speed"),
    Axis("speedup", "speedup over the unquantized model (×)", True, speedup, "{:.2f}×", "speed"),
    Axis("latency", "latency (ms per {per}, batch 1)", False,
         lambda m, s: number(m.get("latency_ms")), "{:.3g} ms", "latency"),
)
AXIS = {a.key: a for a in AXES}


# ---- what a panel holds ---------------------------------------------------------------
@dataclass
class Point:
    x: float
    y: float
    trial: Trial | None = None
    predicted: bool = False       # its x is a predicted speed / latency
    label: str = ""
    shown: tuple[float, float] | None = None   # a reference beyond the axes: at the edge
    off: tuple[int, int] = (0, 0)              # (x, y): +1 beyond the high end, -1 the low
    note: str = ""                             # then its value, for its label

    @property
    def at(self) -> tuple[float, float]:
        """Where it is drawn."""
        return self.shown or (self.x, self.y)


@dataclass
class Series:
    study: Study
    trials: list[Point]                       # every COMPLETE trial (search split only)
    front: list[Point]                        # sorted by x
    stairs: list[tuple[float, float]]         # the front's line
    uniform: list[tuple[str, float, float]]   # (label "4:64", x, y) reference points
    fp: tuple[float, float] | None
    front_label: str = "Pareto front"
    best: Point | None = None                 # best.json


@dataclass
class OneShot:
    signal: str                   # "sensitivity", "single-layer-kl"
    label: str                    # legend text
    points: list[Point]           # sorted by x; label: the budget ("4.5")


@dataclass
class Ref:
    """A reference point (a uniform config or fp) as drawn in one panel."""
    label: str          # "4:64" or "fp"
    x: float
    y: float            # the measured values
    shown_x: float
    shown_y: float      # kept inside the panel's ranges
    off: int            # y: 0 inside; +1 above the range, -1 below (drawn at the edge)
    text: str           # "4:64", or "2:32: ppl 112.40 ↑" when off a range
    off_x: int = 0      # x: the same
    predicted: bool = False


@dataclass
class Panel:
    stem: str                # file name without .png
    axis: Axis
    split: str               # "search" or "report"
    title: str
    subtitle: str            # protocol(s), one a line
    x_label: str
    y_label: str
    metric: str
    log_y: bool
    y_range: tuple[float, float]
    x_range: tuple[float, float] = (0.0, 1.0)
    series: list[Series] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)       # every study's, each point once
    oneshots: list[OneShot] = field(default_factory=list)
    note: str = ""           # which speeds are predicted
    caveat: str = ""         # CPU timing
    group: str = ""          # the protocol group's stem

    @property
    def file_stem(self) -> str:
        return self.stem


# ---- series ---------------------------------------------------------------------------
def _point(study: Study, axis: Axis, m: Mapping, split: str, metric: str,
           t: Trial | None = None, label: str = "") -> Point | None:
    x, y = axis.value(m, study), study.quality(m, split, metric)
    if x is None or y is None:
        return None
    return Point(x, y, t, axis.source(m, study) == "predicted", label)


def series(study: Study, axis: Axis, split: str = "search", metric: str | None = None) -> Series:
    metric = metric or study.metric
    sense = (axis.maximize, study.higher_is_better)
    label = "Pareto front"
    if split == "search":
        pts = [p for t in study.complete()
               if (p := _point(study, axis, t.metrics, split, metric, t))]
        if axis.key == study.objective and study.front is not None:  # the search's own
            front = [p for t in study.front if (p := _point(study, axis, t.metrics, split,
                                                              metric, t))]
        else:
            pool = [p for p in pts if not p.predicted] if axis.speed else pts
            if axis.speed and pool and len(pool) < len(pts):
                label = f"Pareto front of the measured {axis.speed}s"
            elif axis.speed and any(p.predicted for p in pts):
                label, pool = f"Pareto front (predicted {axis.speed}s)", pts
            front = [pool[i] for i in front_of([(p.x, p.y) for p in pool], sense)]
        front.sort(key=lambda p: (p.x, p.y))
        stairs = staircase([(p.x, p.y) for p in front], sense)
    else:  # the report split: only the Pareto plans were scored on it
        pts = []
        front = sorted((p for t in pareto_trials(study)
                        if (p := _point(study, axis, t.metrics, split, metric, t))),
                       key=lambda p: (p.x, p.y))
        stairs, label = [(p.x, p.y) for p in front], "Pareto plans (chosen on the search split)"
    refs = {lab: (axis.value(m, study), study.quality(m, split, metric))
            for lab, m in study.baselines.items()}
    uniform = [(lab, x, y) for lab, (x, y) in refs.items()
               if lab != FP and x is not None and y is not None]
    fp = refs.get(FP)
    best = best_trial(study)
    return Series(study, pts, front, stairs, sorted(uniform, key=lambda u: u[1]),
                  fp if fp and None not in fp else None, label,
                  best and _point(study, axis, best.metrics, split, metric, best, "best.json"))


def oneshots(studies: Sequence[Study], axis: Axis, split: str, metric: str) -> list[OneShot]:
    """Both one-shot signals as reference series, each point once; when the studies'
    one-shot plans differ (other spaces), one series per set of plans."""
    sets: dict[tuple[str, tuple], tuple[list[Point], list[str]]] = {}
    for s in studies:
        by_signal: dict[str, list[Point]] = {}
        for label, e in s.oneshot.items():
            if not isinstance(e, Mapping) or not isinstance(e.get("metrics"), Mapping):
                continue
            m = {**e["metrics"], "report": e.get("report") or {}}
            budget = number(e.get("budget_bits"))
            text = f"{budget:g}" if budget is not None else label.rpartition("@")[2]
            p = _point(s, axis, m, split, metric, None, text)
            if p is not None:
                by_signal.setdefault(str(e.get("signal", label.partition("@")[0])), []).append(p)
        for signal, pts in by_signal.items():
            pts.sort(key=lambda p: (p.x, p.y))
            key = (signal, tuple((p.label, p.x, p.y) for p in pts))
            sets.setdefault(key, (pts, []))[1].append(s.name)
    out = []
    signals = [k[0] for k in sets]
    for (signal, _), (pts, names) in sets.items():
        label = SIGNAL_NAME.get(signal, f"one-shot: {signal}")
        if signals.count(signal) > 1:
            label += f" ({', '.join(names)})"
        out.append(OneShot(signal, label, pts))
    return sorted(out, key=lambda o: (list(SIGNAL_NAME).index(o.signal)
                                      if o.signal in SIGNAL_NAME else 9, o.label))


# ---- ranges: zoom on the trials, far references at the edge ------------------------------
def _fwd(log: bool) -> Callable[[float], float]:
    return (lambda v: math.log(v)) if log else (lambda v: v)


def zoom(core: Sequence[float], near: Sequence[float], log: bool
         ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(data range, axis range): the range of `core`, widened to the values of `near`
    within NEAR of its span, with a PAD margin (in log space on a log axis)."""
    f = _fwd(log)
    ok = [v for v in core if not log or v > 0] or [v for v in near if not log or v > 0] or [1.0]
    lo, hi = f(min(ok)), f(max(ok))
    span = hi - lo or abs(hi) * 0.1 or 1.0
    for v in near:
        if (not log or v > 0) and lo - NEAR * span <= f(v) <= hi + NEAR * span:
            lo, hi = min(lo, f(v)), max(hi, f(v))
    pad = (hi - lo) * PAD or abs(hi) * PAD or 1.0
    back = (lambda v: math.exp(v)) if log else (lambda v: v)
    return (back(lo), back(hi)), (back(lo - pad), back(hi + pad))


def _edge(v: float, data: tuple[float, float], rng: tuple[float, float],
          log: bool) -> tuple[float, int]:
    """(where to draw `v`, side): itself inside `rng`, else halfway into the margin."""
    mid = (lambda a, b: math.sqrt(a * b)) if log else (lambda a, b: (a + b) / 2)
    if (log and v <= 0) or v < rng[0]:
        return mid(data[0], rng[0]), -1
    if v > rng[1]:
        return mid(data[1], rng[1]), 1
    return v, 0


def _refs(ss: Sequence[Series], axis: Axis, metric: str, xs, ys, log: bool) -> list[Ref]:
    """Reference points, each once; one outside a range sits in the margin at that edge."""
    points = [(u, x, y) for s in ss for u, x, y in s.uniform] + \
        [(FP, *s.fp) for s in ss if s.fp]
    out: dict[tuple[str, float, float], Ref] = {}
    for label, x, y in points:
        sx, off_x = _edge(x, xs[0], xs[1], False)
        sy, off = _edge(y, ys[0], ys[1], log)
        parts = [f"{fmt(metric, y, True)}" + (f" {'↑' if off > 0 else '↓'}" if off else "")] \
            if off or off_x else []
        if off_x:
            parts.append(f"{axis.fmt.format(x)} {'→' if off_x > 0 else '←'}")
        text = f"{label}: {', '.join(parts)}" if parts else label
        predicted = axis.speed is not None and label != FP and _ref_predicted(ss, label, axis)
        out.setdefault((label, x, y), Ref(label, x, y, sx, sy, off, text, off_x, predicted))
    return list(out.values())


def _clip(shots: Sequence[OneShot], axis: Axis, metric: str, xs, ys, log: bool) -> None:
    """One-shot points beyond the axes move to the edge; their label gets the value."""
    for o in shots:
        for p in o.points:
            sx, off_x = _edge(p.x, xs[0], xs[1], False)
            sy, off = _edge(p.y, ys[0], ys[1], log)
            if off or off_x:
                p.shown, p.off = (sx, sy), (off_x, off)
                parts = [fmt(metric, p.y, True) + (f" {'↑' if off > 0 else '↓'}" if off
                                                    else "")]
                if off_x:
                    parts.append(f"{axis.fmt.format(p.x)} {'→' if off_x > 0 else '←'}")
                p.note = ", ".join(parts)


def _ref_predicted(ss: Sequence[Series], label: str, axis: Axis) -> bool:
    return any(axis.source(s.study.baselines.get(label, {}), s.study) == "predicted" for s in ss)


# ---- panels ---------------------------------------------------------------------------
def panels(studies: Sequence[Study]) -> list[Panel]:
    """Per protocol group and quality metric: quality against size, bits/weight, speed
    and speed-up (size studies) or latency (latency studies) on the search split, and
    against the objective on each report split."""
    out = []
    for g in groups(studies):
        metrics = list(dict.fromkeys(s.metric for s in g.studies))
        for metric in metrics:
            group = [s for s in g.studies if s.metric == metric]
            stem = g.stem + (f"-{metric}" if len(metrics) > 1 else "")
            objectives = {s.objective for s in group}
            keys = ["size", "bits"] + (["speed", "speedup"] if "size" in objectives else []) + \
                (["latency"] if "latency" in objectives else [])
            for key in keys:
                out += _panel(f"{stem}-pareto-{key}", group, AXIS[key], "search", metric,
                              group_stem=g.stem)
            reports: dict[str, list[Study]] = {}
            for s in group:
                if (p := s.report_protocol()) is not None:
                    reports.setdefault(p, []).append(s)
            for i, (protocol, rs) in enumerate(reports.items()):
                tail = f"-{i + 1}" if len(reports) > 1 else ""
                for key in [k for k in ("size", "latency") if k in objectives]:
                    out += _panel(f"{stem}-report-{key}{tail}", rs, AXIS[key], "report", metric,
                                  protocol, g.stem)
    return out


def _panel(stem: str, group: list[Study], axis: Axis, split: str, metric: str,
           report_protocol: str | None = None, group_stem: str = "") -> list[Panel]:
    ss = [series(s, axis, split, metric) for s in group]
    shots = oneshots(group, axis, split, metric)
    moving = [p for s in ss for p in (s.trials or s.front)]
    refs = [(x, y) for s in ss for _, x, y in s.uniform] + [s.fp for s in ss if s.fp] + \
        [(p.x, p.y) for o in shots for p in o.points]
    if not moving and (split == "report" or not refs):
        return []
    first = group[0]
    targets = [t for s in group if (t := s.target) is not None]
    ys = [p.y for p in moving] + targets or [y for _, y in refs]
    log_y = metric in ("ppl", "kld") and min(ys) > 0 and \
        max(ys) / min(ys) > (3 if metric == "ppl" else 10)
    xs = zoom([p.x for p in moving], [x for x, _ in refs], False)
    yr = zoom(ys, [y for _, y in refs], log_y)
    unit = METRICS[first.speed_key].unit
    x_label = axis.label.format(unit=unit, per=METRICS[first.speed_key].per)
    better = "higher" if first.higher_is_better else "lower"
    protocol = str(first.meta.get("protocol", "?"))
    subtitle = f"search split: {protocol}" if split == "search" else \
        f"report split: {report_protocol}\nplans chosen on the search split: {protocol}"
    points = moving + [p for o in shots for p in o.points]
    predicted = axis.speed is not None and any(p.predicted for p in points)
    metrics = [p.trial.metrics for p in moving if p.trial] + \
        [m for s in group for m in s.baselines.values()]
    cpu = axis.speed is not None and any(on_cpu(m) for m in metrics)
    _clip(shots, axis, metric, xs, yr, log_y)
    name = METRICS[metric].title
    return [Panel(
        stem, axis, split,
        title=f"{first.meta.get('model', '?')} · {first.meta.get('task', '?')} — {name} vs "
              f"{x_label.split(' (')[0]}" + (" — report split" if split == "report" else ""),
        subtitle=subtitle, x_label=x_label,
        y_label=f"{first.meta.get('task', '?')} {name} ("
                f"{'report split, ' if split == 'report' else ''}{better} is better"
                f"{', log scale' if log_y else ''})",
        metric=metric, log_y=log_y, y_range=yr[1], x_range=xs[1], series=ss,
        refs=_refs(ss, axis, metric, xs, yr, log_y), oneshots=shots,
        note=PREDICTED_NOTE.format(what=axis.speed) if predicted else "",
        caveat=CPU_CAVEAT if cpu else "", group=group_stem)]
