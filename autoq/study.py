"""The study contract: what `autoq search` writes and `autoq report` reads.

One place for the file names, the format versions, the Optuna attribute keys
(namespaced `autoq:*`, the way Optuna names its `nsga2:*` keys), how a trial's
stored metrics are completed (the *overlay*), the Pareto front and the best
config. Both the search and the report import these; neither re-implements them.

Study folder (`<out>/<study>/`): study.json, baselines.json, sensitivity.json,
trials.jsonl (one record per finished or failed trial), pareto.json, one plan per
Pareto config (pareto-NN.json, the least of the objective first), best.json
(autoq.plan/1) and oneshot.json (the one-shot reference plans).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, TypeVar

from .errors import deprecated
from .metrics import Target

FORMAT = "autoq.study/1"
STUDY_FILE = "study.json"
TRIALS_FILE = "trials.jsonl"
PARETO_FILE = "pareto.json"
BEST_FILE = "best.json"
BASELINES_FILE = "baselines.json"
SENSITIVITY_FILE = "sensitivity.json"
ONESHOT_FILE = "oneshot.json"       # the one-shot plans (also the autoq:oneshot attribute)
LOCK_FILE = ".lock"


def pareto_file(i: int) -> str:
    return f"pareto-{i:02d}.json"


# ---- what a study minimises beside quality (`autoq search --minimize`) -----------------
OBJECTIVES = {"size": "size_mib",        # exact size of the quantized model, MiB
              "latency": "latency_ms"}   # the latency model's predicted ms per token / image


OBJECTIVE = "objective"             # study.json / pareto.json: a key of OBJECTIVES
INFO_DEFAULTS = {OBJECTIVE: "size"}  # study.json keys older studies lack -> what they meant


def study_info(info: Mapping[str, Any]) -> dict:
    """A study.json (or pareto.json) object with the keys older studies lack filled in
    (deprecated: said once)."""
    missing = [k for k in INFO_DEFAULTS if k not in info]
    if missing:
        deprecated(f"a study.json without {missing[0]!r} (written before autoq 0.1)",
                   f"\"{missing[0]}\": \"{INFO_DEFAULTS[missing[0]]}\" in it, or run the search again")
    return {**INFO_DEFAULTS, **info}


def objective(info: Mapping[str, Any]) -> str:
    """What a study minimises beside quality, from its study.json (or pareto.json)
    object: "size" or "latency" (studies written before there was a choice: size)."""
    return study_info(info)[OBJECTIVE]


def objective_key(objective: str | None) -> str:
    """The metrics key a study minimises (`objective` from study.json; None, in studies
    written before there was a choice: size)."""
    if objective is None:
        return OBJECTIVES[study_info({})[OBJECTIVE]]
    return OBJECTIVES[objective]


# ---- Optuna attribute keys -------------------------------------------------------------
# study user attrs
INFO = "autoq:study"                # the study.json object
BASELINES = "autoq:baselines"       # label ("fp", "4:64") -> metrics of the reference points
RESCORED = "autoq:rescored"         # trial number -> full-data metrics and units (front configs)
FRONT_SPEED = "autoq:front_speed"   # trial number -> re-measured speed of a front config
REPORT = "autoq:report"             # trial number -> a front config's report-split metrics
ONESHOT = "autoq:oneshot"           # the one-shot reference plans and their metrics
PRIOR_ENQUEUED = "autoq:prior_enqueued"  # how many prior (knapsack) configs were enqueued
# trial user attrs
ORIGIN = "autoq:origin"             # "prior", "sampler" (or "uniform" in reports)
LAYERS = "autoq:layers"             # module name -> {"nbits", "group_size"} | None
METRICS = "autoq:metrics"
UNITS = "autoq:units"               # per-window / per-image values, in scoring order
DUPLICATE_OF = "autoq:duplicate_of"
PRUNED_AT = "autoq:pruned_at"       # fraction of the data seen when it was pruned
RETRY_OF = "autoq:retry_of"
SURPLUS = "autoq:surplus"
FAIL_REASON = "autoq:fail_reason"
# trial system attrs
HEARTBEAT = "autoq:heartbeat"
RETRY_HISTORY = "autoq:retry_history"

# what studies written before the namespaced keys used (read with a deprecation line,
# never written)
LEGACY = {INFO: "autoq", BASELINES: "baselines", RESCORED: "rescored",
          FRONT_SPEED: "front_speed", PRIOR_ENQUEUED: "seeded", ORIGIN: "origin",
          LAYERS: "layers", METRICS: "metrics", UNITS: "units", DUPLICATE_OF: "duplicate_of",
          PRUNED_AT: "pruned_at", RETRY_OF: "retry_of", SURPLUS: "surplus",
          FAIL_REASON: "fail_reason", RETRY_HISTORY: "retry_history"}
ORIGIN_NAMES = {"seed": "prior"}    # older spelling of an origin -> the current one


def attr(attrs: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """`attrs[key]`, falling back to the key's legacy spelling (deprecated: said once)."""
    if key in attrs:
        return attrs[key]
    old = LEGACY.get(key)
    if old is not None and old in attrs:
        deprecated(f"the study attribute {old!r} (a study written before autoq 0.1)",
                   f"{key!r}: run the search again into a new study")
        return attrs[old]
    return default


def origin(attrs: Mapping[str, Any]) -> str:
    value = str(attr(attrs, ORIGIN) or "sampler")
    if value in ORIGIN_NAMES:
        deprecated(f"the trial origin {value!r}", repr(ORIGIN_NAMES[value]))
    return ORIGIN_NAMES.get(value, value)


# ---- metrics -----------------------------------------------------------------------
def overlay(metrics: Mapping, rescored: Mapping | None = None,
            front_speed: Mapping | None = None) -> dict:
    """A trial's metrics as they stand: what it recorded, then the full-data scores of a
    partly scored config that was later scored on all the data, then the re-measured
    speed of a front config."""
    out = dict(metrics)
    if isinstance(rescored, Mapping):
        out.update(rescored.get("metrics", {}))
    if isinstance(front_speed, Mapping):
        out.update(front_speed)
    return out


def number(x: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, text, bool)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)



# ---- Pareto fronts (pure) ----------------------------------------------------------
def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """`a` is at least as good as `b` everywhere and strictly better somewhere
    (`senses[i]`: "min" or "max"); identical points do not dominate each other, so ties
    all stay on the front."""
    better = False
    for x, y, s in zip(a, b, senses):
        if s == "max":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better


def front_indices(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, senses) for j, q in enumerate(points) if j != i)]


K = TypeVar("K")


def front_of(points: Sequence[tuple[float, float]], maximize: tuple[bool, bool]) -> list[int]:
    """Indices of the non-dominated points (ties all kept), sorted by x then y."""
    keep = front_indices(points, ["max" if m else "min" for m in maximize])
    return sorted(keep, key=lambda i: (points[i], i))


def front(items: Sequence[tuple[K, Mapping]], target: Target, x: str = "size_mib") -> list[K]:
    """The Pareto front of `items` (key, metrics) by (`x` minimised, quality; `x` is the
    study's `objective_key`), least `x` first; items missing either value are left out."""
    pts = [(number(m.get(x)), number(m.get(target.metric)), k) for k, m in items]
    pts = [p for p in pts if None not in p[:2]]
    keep = front_of([p[:2] for p in pts], (False, target.higher_is_better))
    return [pts[i][2] for i in keep]


def best(items: Sequence[tuple[K, Mapping]], target: Target,
         number_of: Callable[[K], int | None] = lambda k: None, x: str = "size_mib") -> K | None:
    """The least-`x` item (the smallest, or with x="latency_ms" the fastest) that meets
    the target; ties: the better quality (so the best is always on the front), then the
    lower trial number, then the earlier item. With no quality target (budget mode: a
    size cap only), the best quality that fits; ties: the smaller, then as above."""
    sign = -1.0 if target.higher_is_better else 1.0
    ok = [(size, sign * m[target.metric], n if (n := number_of(k)) is not None else math.inf, i)
          for i, (k, m) in enumerate(items)
          if target.meets(m) and (size := number(m.get(x))) is not None]
    if target.value is None:
        ok = [(q, size, n, i) for size, q, n, i in ok]
    return items[min(ok)[3]][0] if ok else None
