"""Metrics, defined once: name, direction, format, unit, range; and the quality target.

Every number autoq records under a metric key (`ppl`, `accuracy`, `kld`, `size_mib`,
`latency_ms`, `tokens_per_s`, ...) has one `Metric` here. Search, report and the CLI
read its direction, its format and its unit from `METRICS`, so a number prints the
same everywhere. A task's quality metric is a fixed function (`link`) of the mean of
per-unit values (a window's NLL, an image's 0/1 hit), which lets a search estimate it
from part of the data (autoq.search.estimate).

A `Target` (frozen, pure) says what "meets the target" means: the search uses it to
constrain trials, stop scoring early and pick best.json; `autoq report` uses the same
object, so both always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping


def _same(x: float) -> float:
    return x


@dataclass(frozen=True)
class Metric:
    name: str                       # the key in metrics dicts
    title: str                      # in words, for axes and help
    short: str                      # in tables and one-line notes
    higher_is_better: bool
    spec: str                       # format spec of a value
    unit: str = ""                  # shown after the value
    link: Callable[[float], float] = _same   # the metric from the mean per-unit value
    low: float = -math.inf          # its range
    high: float = math.inf
    flag: str | None = None         # `autoq search` flag that targets it
    example: str = ""               # a typical target value, for error messages
    per: str = ""                   # speeds: what one item is ("token", "image")

    def format(self, value: float | None, with_name: bool = False, unit: bool = True) -> str:
        """The value as every table and line shows it ("—" for none), with its unit
        (a table whose column names the unit leaves it out)."""
        if value is None:
            return "—"
        text = format(value, self.spec) + (f" {self.unit}" if self.unit and unit else "")
        return f"{self.short} {text}" if with_name else text

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def clip(self, value: float) -> float:
        """A value (an estimate from few units can cross 0 or 1) kept inside the range."""
        return min(max(value, self.low), self.high)


_ALL = (
    Metric("ppl", "perplexity", "ppl", False, ".2f", link=math.exp, low=1.0,
           flag="--target-ppl", example="14"),
    Metric("accuracy", "top-1 accuracy", "accuracy", True, ".2%", low=0.0, high=1.0,
           flag="--target-acc", example="0.9"),
    Metric("kld", "KL divergence from the unquantized model", "KL", False, ".4g", low=0.0,
           flag="--target-kld", example="0.05"),
    Metric("size_mib", "model size", "size", False, ".1f", "MiB", low=0.0),
    Metric("bits_per_weight", "bits per weight (quantized layers)", "bits/weight", False,
           ".2f", "bits/weight", low=0.0),
    Metric("latency_ms", "predicted latency", "latency", False, ".3g", "ms", low=0.0),
    Metric("tokens_per_s", "decode speed", "speed", True, ".3g", "tokens/s", low=0.0,
           per="token"),
    Metric("images_per_s", "throughput", "speed", True, ".3g", "images/s", low=0.0,
           per="image"),
)
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
QUALITY = ("ppl", "accuracy", "kld")     # what a quality target can be on
TARGET_FLAGS = {METRICS[q].flag: q for q in QUALITY}


def fmt(metric: str, value: float | None, with_name: bool = False) -> str:
    """`METRICS[metric].format`, for keys that may not be registered (shown with .4g)."""
    m = METRICS.get(metric) or Metric(metric, metric, metric, False, ".4g")
    return m.format(value, with_name)


@dataclass(frozen=True)
class Target:
    metric: str                       # "ppl", "accuracy" or "kld"
    value: float | None               # None: no quality target (map the trade-off)
    higher_is_better: bool = field(default=None)  # type: ignore[assignment]
    max_size_mib: float | None = None

    def __post_init__(self):
        if self.higher_is_better is None:
            object.__setattr__(self, "higher_is_better", METRICS[self.metric].higher_is_better)

    # ---- comparisons -----------------------------------------------------------------
    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def reached(self, value: float) -> bool:
        """`value` is on the good side of the quality target (or there is none)."""
        if self.value is None:
            return True
        return value >= self.value if self.higher_is_better else value <= self.value

    def meets(self, metrics: Mapping) -> bool:
        """A finite quality that reaches the target, and the size cap if there is one."""
        value = metrics.get(self.metric)
        if not _finite(value) or not self.reached(value):
            return False
        size = metrics.get("size_mib")
        return self.max_size_mib is None or (isinstance(size, (int, float))
                                             and size <= self.max_size_mib)

    # ---- what the search derives from it ------------------------------------------------
    def constraints(self, metrics: Mapping) -> dict[str, float]:
        """Optuna constraint values (feasible when <= 0): quality, and size if capped."""
        v = metrics.get(self.metric, math.inf)
        v = v if math.isfinite(v) else (-1e9 if self.higher_is_better else 1e9)
        out = {}
        if self.value is not None:
            out["quality"] = self.value - v if self.higher_is_better else v - self.value
        if self.max_size_mib is not None and "size_mib" in metrics:
            out["size"] = metrics["size_mib"] - self.max_size_mib
        return out

    def loss(self, value: float | None, fp: float) -> float | None:
        """Quality loss against the unquantized model, in the units the sensitivity
        model predicts: log(ppl / fp ppl), the accuracy drop, or the KL itself (fp's is 0)."""
        if value is None or not math.isfinite(value) or (self.metric == "ppl" and value <= 0):
            return None
        if self.metric == "ppl":
            return math.log(value / fp)
        return fp - value if self.higher_is_better else value - fp

    def carried(self, fp_from: float | None, fp_to: float | None) -> "Target":
        """This target moved to another split: the value with the same `loss` against the
        fp model there (ppl: scaled by fp's ratio; accuracy: shifted by fp's difference; KL,
        a divergence from fp on the same windows: unchanged). Itself when either fp value
        is unknown. The report split is scored against this, not the typed number: the
        test split of WikiText-2 is ~30% harder than validation for every model, fp too."""
        if self.value is None or self.metric == "kld" or not _finite(fp_from) \
                or not _finite(fp_to) or (self.metric == "ppl" and fp_from <= 0):
            return self
        value = self.value * fp_to / fp_from if self.metric == "ppl" \
            else self.value + (fp_to - fp_from)
        return Target(self.metric, value, self.higher_is_better, self.max_size_mib)

    def decide(self, interval: tuple[float, float]) -> str | None:
        """'feasible' when the whole (low, high) interval reaches the target,
        'infeasible' when none of it does, else None (score on)."""
        if self.value is None:
            return None
        lo, hi = interval
        worst, best = (lo, hi) if self.higher_is_better else (hi, lo)
        if self.reached(worst):
            return "feasible"
        if not self.reached(best):
            return "infeasible"
        return None

    def text(self) -> str:
        if self.value is None:
            return "no target"
        sign = "≥" if self.higher_is_better else "≤"
        return f"{self.metric} {sign} {fmt(self.metric, self.value)}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
