"""Pure data steps behind every picture and table of `autoq report`.

Nothing here draws, prints or writes: a Study (read by load.py) goes in; Pareto
fronts, staircases, plot panels, bit-allocation matrices and table rows come
out. The drawers (draw_png.py, draw_html.py, tables.py) only turn these into
pictures, so a new plot is one data function plus one small drawing function.

Front rule (autoq/pareto.py, the same as the search's): a point dominates
another when it is at least as good in both objectives and strictly better in
one. Equal points do not dominate each other, so ties all stay on the front.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..pareto import front_indices

FP_BITS = 16.0          # what a layer kept in full precision shows as in the heatmap
HEAD_ROLES = ("lm_head", "head", "head_dist")
ROLE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
              "qkv", "proj", "fc1", "fc2")
METRIC_NAME = {"ppl": "perplexity", "accuracy": "top-1 accuracy"}
SPEED_UNIT = {"tokens_per_s": "tokens/s", "images_per_s": "images/s"}


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
    def speed_key(self) -> str:
        return self.meta.get("speed_key", "tokens_per_s")

    @property
    def fp_speed(self) -> float | None:
        return number(self.baselines.get("fp", {}).get(self.speed_key))

    def quality(self, metrics: Mapping) -> float | None:
        return number(metrics.get(self.metric))

    def complete(self) -> list[Trial]:
        """Finished trials with full metrics, each config once."""
        return [t for t in self.trials if t.state == "COMPLETE" and t.duplicate_of is None]

    def meets(self, metrics: Mapping) -> bool:
        """The quality target (and the study's size limit, if any)."""
        q, t = self.quality(metrics), self.target
        if q is None or t is not None and (q < t if self.higher_is_better else q > t):
            return False
        limit, size = number(self.meta.get("max_size_mib")), number(metrics.get("size_mib"))
        return limit is None or (size is not None and size <= limit)


def number(x: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, text, bool)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


# ---- Pareto fronts (the rule itself lives in autoq/pareto.py, shared with the search) ----
def front(points: Sequence[tuple[float, float]], maximize: tuple[bool, bool]) -> list[int]:
    """Indices of the non-dominated points (ties all kept), sorted by x then y."""
    keep = front_indices(points, ["max" if m else "min" for m in maximize])
    return sorted(keep, key=lambda i: points[i])


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
    on_front = [pts[i] for i in front([(p.x, p.y) for p in pts],
                                      (axis.maximize, study.higher_is_better))]
    refs = {label: (axis.value(m, study), study.quality(m)) for label, m in study.baselines.items()}
    uniform = [(label, x, y) for label, (x, y) in refs.items()
               if label != "fp" and x is not None and y is not None]
    fp = refs.get("fp")
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
        [("fp", *s.fp) for s in ss if s.fp]
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


# ---- bit-allocation heatmap -----------------------------------------------------------
@dataclass
class Heatmap:
    blocks: list[str]               # x axis: "0", "1", ..., then "head" for layers outside blocks
    roles: list[str]                # y axis: q_proj, k_proj, ..., lm_head
    bits: list[list[float | None]]  # [role][block]: nbits; FP_BITS = kept in full precision;
                                    # None = no such layer
    text: list[list[str]]           # group size ("64", "row"), "fp", or "" (no layer)
    names: list[list[str]]          # full module name, or ""


_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def _config(value) -> tuple[float, int | None] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value["nbits"], value.get("group_size")
    return value.nbits, value.group_size  # a LayerConfig


def heatmap(layers: Mapping[str, Any]) -> Heatmap:
    """Bits per (role, block) from a plan's layers (module name -> config or None).

    The block is the first numeric part of the module name (model.layers.N.…,
    blocks.N.…); the role is the last part (q_proj, fc1, …). Layers outside the
    blocks (the head) get a column of their own."""
    cells: dict[tuple[str, str], str] = {}
    for name in layers:
        m = _BLOCK.match(name)
        block, rest = (m.group(2), m.group(3)) if m else ("", name)
        cells[(block, rest)] = name
    rests_by_role = Counter((b, r.rsplit(".", 1)[-1]) for b, r in cells)
    unique = all(n == 1 for n in rests_by_role.values())  # last part names the role
    placed = {(b, r.rsplit(".", 1)[-1] if unique else r): name for (b, r), name in cells.items()}
    numbers = sorted({int(b) for b, _ in placed if b})
    outside = sorted({r for b, r in placed if not b})
    extra = "head" if outside and all(r.rsplit(".", 1)[-1] in HEAD_ROLES for r in outside) \
        else "other"
    blocks = [str(n) for n in numbers] + ([extra] if outside else [])
    inner = {r for b, r in placed if b}
    roles = sorted(inner, key=lambda r: (ROLE_ORDER.index(r) if r in ROLE_ORDER else
                                         len(ROLE_ORDER), r)) + \
        [r for r in outside if r not in inner]
    bits = [[None] * len(blocks) for _ in roles]
    text = [[""] * len(blocks) for _ in roles]
    names = [[""] * len(blocks) for _ in roles]
    for (b, r), name in placed.items():
        i, j = roles.index(r), blocks.index(b if b else extra)
        cfg = _config(layers[name])
        bits[i][j] = FP_BITS if cfg is None else float(cfg[0])
        text[i][j] = "fp" if cfg is None else str(cfg[1] or "row")
        names[i][j] = name
    return Heatmap(blocks, roles, bits, text, names)


def config_label(value) -> str:
    cfg = _config(value)
    return "fp" if cfg is None else f"{cfg[0]:g}:{cfg[1] or 'row'}"


def plan_summary(layers: Mapping[str, Any]) -> str:
    """Layer counts per config, most used first: '4:64 ×150 · 8:64 ×30 · fp ×1'."""
    counts = Counter(config_label(v) for v in layers.values())
    return " · ".join(f"{label} ×{n}" for label, n in counts.most_common())


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
    ok = [(size, t.number if t.number is not None else math.inf, i, t)
          for i, t in enumerate(study.complete())
          if study.meets(t.metrics) and (size := number(t.metrics.get("size_mib"))) is not None]
    return min(ok)[-1] if ok else None


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


def fmt_metric(metric: str, value: float | None, with_name: bool = True) -> str:
    if value is None:
        return "—"
    text = f"{value:.1%}" if metric == "accuracy" else f"{value:.2f}"
    return f"{metric} {text}" if with_name else text


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
    return [_row(study, label if label != "fp" else "fp (unquantized)", "", m)
            for label, m in items]


def headers(study: Study) -> list[str]:
    unit = SPEED_UNIT.get(study.speed_key, study.speed_key)
    names = {"quality": study.metric, "speed": unit, "speedup": "speedup vs fp"}
    return [names.get(c, c) for c in COLUMNS]


def counts(study: Study) -> str:
    c = Counter(t.state for t in study.trials)
    return ", ".join(f"{c[s]} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if c[s]) \
        or "no trials yet"


def target_text(study: Study) -> str:
    t = study.target
    if t is None:
        return "no target"
    return f"{study.metric} {'≥' if study.higher_is_better else '≤'} " + \
        fmt_metric(study.metric, t, with_name=False)


def plan_files(study: Study) -> dict[int, str]:
    """Trial number -> the plan file(s) the search wrote for it."""
    out: dict[int, list[str]] = {}
    for t in [*(study.front or []), *([study.best] if study.best else [])]:
        if t.number is not None and t.plan:
            out.setdefault(t.number, []).append(t.plan)
    return {n: ", ".join(files) for n, files in out.items()}
