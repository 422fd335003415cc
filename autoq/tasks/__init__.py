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
from pathlib import Path
from typing import Callable, Iterator, Sequence

import yaml

from ..errors import UserError
from ..resources import resource_dir


@dataclass(frozen=True)
class TaskImpl:
    """What a task's module registers (see `register`)."""
    load: Callable         # (task, loaded_model, data, seq_len, limit) -> dataset
    units: Callable        # (loaded_model, dataset) -> Iterator[float], one value per unit
    count: Callable        # (dataset) -> number of units
    take: Callable         # (dataset, indices) -> the dataset with only these units, in order
    describe: Callable     # (dataset) -> the protocol, in words
    calibration: Callable  # (dataset, n) -> n (input, target) batches from the first units
    loss: Callable         # (loaded_model, (input, target)) -> differentiable mean loss


IMPLS: dict[str, TaskImpl] = {}


def register(name: str, **impl: Callable) -> None:
    IMPLS[name] = TaskImpl(**impl)


@dataclass(frozen=True)
class Task:
    name: str
    model_kind: str         # "lm" or "vit"
    metric: str             # "ppl" or "accuracy"
    spec: dict              # the whole YAML

    @property
    def impl(self) -> TaskImpl:
        return IMPLS[self.name]

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def metric_of(self, units: Sequence[float]) -> float:
        """The metric from per-unit values: exp(mean NLL) or the hit rate."""
        return LINK[self.metric](sum(units) / len(units))

    @property
    def check_every(self) -> int:
        """How many units a search scores between two early-stopping checks."""
        return int(self.spec.get("check_every", 1))

    def load(self, loaded, data: str | None, seq_len: int | None, limit: int | None):
        if loaded.kind.name != self.model_kind:
            raise UserError(f"task {self.name} needs {KIND_WORDS[self.model_kind]}, but "
                            f"{loaded.spec!r} is {loaded.kind.words}; pick a matching --model "
                            "or --task.")
        return self.impl.load(self, loaded, data, seq_len, limit)

    def units(self, loaded, dataset) -> Iterator[float]:
        return self.impl.units(loaded, dataset)

    def count(self, dataset) -> int:
        return self.impl.count(dataset)

    def take(self, dataset, indices: Sequence[int]):
        return self.impl.take(dataset, indices)

    def protocol(self, dataset) -> str:
        return self.impl.describe(dataset)

    def calibration(self, dataset, n: int) -> list:
        return self.impl.calibration(dataset, n)

    def loss(self, loaded, batch):
        return self.impl.loss(loaded, batch)

    def score(self, loaded, dataset) -> float:
        """The metric on all the data."""
        return self.metric_of(list(self.units(loaded, dataset)))


LINK = {"ppl": math.exp, "accuracy": lambda mean: mean}
KIND_WORDS = {"lm": "a causal language model", "vit": "an image classifier (ViT)"}


def task_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("eval").glob("*.yaml"))


def get_task(name: str) -> Task:
    path = resource_dir("eval") / f"{name}.yaml"
    if not path.exists() or name not in IMPLS:
        raise UserError(f"unknown task {name!r}; use one of {', '.join(task_names())}.")
    spec = yaml.safe_load(path.read_text())
    return Task(spec["name"], spec["model_kind"], spec["metric"], spec)


def check_data_path(data: str | None, want_dir: bool) -> Path | None:
    if data is None:
        return None
    p = Path(data)
    if not p.exists():
        raise UserError(f"--data {data}: no such {'folder' if want_dir else 'file'}.")
    if want_dir != p.is_dir():
        raise UserError(f"--data {data}: expected a {'folder' if want_dir else 'file'}.")
    return p


from . import cifar100, digits, wikitext2  # noqa: E402,F401  (registers the scorers)
