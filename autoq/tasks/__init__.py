"""Evaluation tasks: `eval/<name>.yaml` declares the data and defaults; a scorer
registered here under the same name computes the metric.

A scorer is a generator of per-unit values, in data order: the mean next-token
NLL of each window (wikitext2), 1/0 for each image's top-1 hit (cifar100). The
metric is a fixed function of their mean (`Task.metric_of`), so a search can
stop a trial after part of the data and estimate the rest (`autoq.estimate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from ..args import check_counts, check_data_path, check_task_fits, task_spec  # noqa: F401
from ..errors import UserError


@dataclass(frozen=True)
class TaskImpl:
    """What a task's module registers (see `register`)."""
    load: Callable         # (task, loaded_model, data, seq_len, limit, split) -> dataset,
                           #   whose `.index` lists its units' ids (stable across take)
    outputs: Callable      # (loaded_model, dataset) -> Iterator[(logits, target)] per unit
    value: Callable        # (logits, target) -> the unit's value (a window's NLL, a 1/0 hit)
    count: Callable        # (dataset) -> number of units
    take: Callable         # (dataset, indices) -> the dataset with only these units, in order
    describe: Callable     # (dataset) -> the protocol, in words
    calibration: Callable  # (dataset, n) -> n (input, target) batches from the first units
    loss: Callable         # (loaded_model, (input, target)) -> differentiable mean loss
    names: Callable = lambda task, data: None  # (task, data) -> class names, or None
    shorten: Callable = lambda dataset, tokens: dataset  # (dataset, tokens) -> each unit's
                           # first `tokens` tokens (LMs; a causal model's first outputs
                           # do not depend on the rest, so the reference's first rows hold)


IMPLS: dict[str, TaskImpl] = {}
SPLITS = ("search", "report")   # configs are chosen on the search split, reported on the other
KLD = "kld"


def register(name: str, **impl: Callable) -> None:
    IMPLS[name] = TaskImpl(**impl)


@dataclass(frozen=True)
class Task:
    name: str
    model_kind: str         # "lm" or "vit"
    metric: str             # its own metric: "ppl" or "accuracy" (it also measures "kld")
    spec: dict              # the whole YAML

    @property
    def impl(self) -> TaskImpl:
        return IMPLS[self.name]

    @property
    def metrics(self) -> tuple[str, str]:
        return self.metric, KLD

    def higher_is_better(self, metric: str | None = None) -> bool:
        return (metric or self.metric) == "accuracy"

    def metric_of(self, units: Sequence[float], metric: str | None = None) -> float:
        """The metric from per-unit values: exp(mean NLL), the hit rate, the mean KL."""
        return LINK[metric or self.metric](sum(units) / len(units))

    @property
    def check_every(self) -> int:
        """How many units a search scores between two early-stopping checks."""
        return int(self.spec.get("check_every", 1))

    def load(self, loaded, data: str | None, seq_len: int | None, limit: int | None,
             split: str = "search"):
        check_task_fits(self.spec, loaded.spec, loaded.kind.name)
        check_counts(seq_len, limit)
        return self.impl.load(self, loaded, data, seq_len, limit, split)

    def units(self, loaded, dataset, reference: Mapping | None = None,
              capture: dict | None = None) -> Iterator[dict[str, float]]:
        """Per unit, in data order: {metric: value} and, with the fp model's `reference`
        (autoq.kld), its "kld"; `capture` (a dict) collects this model's own top-k per
        unit id, which makes it the reference."""
        from .. import kld

        outputs = self.impl.outputs(loaded, dataset)
        for uid, (logits, target) in zip(dataset.index, outputs):
            out = {self.metric: self.impl.value(logits, target)}
            if reference is not None:
                out[KLD] = kld.kl(logits, reference[uid])
            if capture is not None:
                capture[uid] = kld.top_k(logits, int(self.spec.get("kld_top_k", kld.TOP_K)))
            yield out

    def count(self, dataset) -> int:
        return self.impl.count(dataset)

    def take(self, dataset, indices: Sequence[int]):
        return self.impl.take(dataset, indices)

    def protocol(self, dataset) -> str:
        return self.impl.describe(dataset)

    def shorten(self, dataset, tokens: int):
        return self.impl.shorten(dataset, tokens)

    def calibration(self, dataset, n: int) -> list:
        return self.impl.calibration(dataset, n)

    def loss(self, loaded, batch):
        return self.impl.loss(loaded, batch)

    def class_names(self, data: str | None) -> list[str] | None:
        """The classes' names (index -> name) where the task knows them, else None."""
        return self.impl.names(self, data)

    def score(self, loaded, dataset, reference: Mapping | None = None) -> dict[str, float]:
        """The metrics on all the data (kld with a reference)."""
        rows = list(self.units(loaded, dataset, reference))
        return {m: self.metric_of([r[m] for r in rows], m) for m in rows[0]}


LINK = {"ppl": math.exp, "accuracy": lambda mean: mean, KLD: lambda mean: mean}
RANGE = {"ppl": (1.0, math.inf), "accuracy": (0.0, 1.0), KLD: (0.0, math.inf)}


def clip(metric: str, value: float) -> float:
    """An estimate kept inside the metric's range (an interval from few units can
    cross 0 or 1)."""
    lo, hi = RANGE[metric]
    return min(max(value, lo), hi)


def get_task(name: str) -> Task:
    spec = task_spec(name)
    if name not in IMPLS:
        raise UserError(f"task {name!r} has no scorer registered; reinstall autoq.")
    return Task(spec["name"], spec["model_kind"], spec["metric"], spec)


from . import cifar100, digits, wikitext2  # noqa: E402,F401  (registers the scorers)
