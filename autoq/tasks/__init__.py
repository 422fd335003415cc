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
class Task:
    name: str
    model_kind: str         # "lm" or "vit"
    metric: str             # "ppl" or "accuracy"
    spec: dict              # the whole YAML

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def meets(self, value: float, target: float) -> bool:
        return value >= target if self.higher_is_better else value <= target

    def metric_of(self, units: Sequence[float]) -> float:
        """The metric from per-unit values: exp(mean NLL) or the hit rate."""
        return LINK[self.metric](sum(units) / len(units))


LINK = {"ppl": math.exp, "accuracy": lambda mean: mean}


@dataclass(frozen=True)
class TaskImpl:
    load: Callable      # (task, loaded_model, data, seq_len, limit) -> dataset object
    units: Callable     # (loaded_model, dataset) -> Iterator[float], one value per window/image
    count: Callable     # (dataset) -> number of units
    take: Callable      # (dataset, indices) -> the dataset with only these units, in this order


IMPLS: dict[str, TaskImpl] = {}


def register(name: str, load: Callable, units: Callable, count: Callable,
             take: Callable) -> None:
    IMPLS[name] = TaskImpl(load, units, count, take)


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


def units(task: Task, loaded, dataset) -> Iterator[float]:
    return IMPLS[task.name].units(loaded, dataset)


def count(task: Task, dataset) -> int:
    return IMPLS[task.name].count(dataset)


def take(task: Task, dataset, indices: Sequence[int]):
    return IMPLS[task.name].take(dataset, indices)


def score(task: Task, loaded, dataset) -> float:
    """The metric on all the data."""
    return task.metric_of(list(units(task, loaded, dataset)))


KIND_WORDS = {"lm": "a causal language model", "vit": "an image classifier (ViT)"}


def load_data(task: Task, loaded, data: str | None, seq_len: int | None, limit: int | None):
    if loaded.kind != task.model_kind:
        raise UserError(f"task {task.name} needs {KIND_WORDS[task.model_kind]}, but "
                        f"{loaded.spec!r} is {KIND_WORDS[loaded.kind]}; pick a matching --model "
                        "or --task.")
    return IMPLS[task.name].load(task, loaded, data, seq_len, limit)


from . import cifar100, wikitext2  # noqa: E402,F401  (registers the scorers)
