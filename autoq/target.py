"""The quality target of a study: what "meets the target" means, once.

A `Target` is frozen and pure. The search uses it to constrain trials, to stop
scoring a trial early and to pick `best.json`; `autoq report` uses the same
object to mark feasible configs, so both always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Target:
    metric: str                       # "ppl", "accuracy" or "kld"
    value: float | None               # None: no quality target (map the trade-off)
    higher_is_better: bool = False
    max_size_mib: float | None = None

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
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not math.isfinite(value) or not self.reached(value):
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
        value = f"{self.value:.1%}" if self.metric == "accuracy" else \
            f"{self.value:.4g}" if self.metric == "kld" else f"{self.value:.2f}"
        return f"{self.metric} {'≥' if self.higher_is_better else '≤'} {value}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
