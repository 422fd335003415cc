"""Evaluation tasks: `eval/<name>.yaml` declares the data and defaults; a scorer
registered here under the same name computes the metric.

A scorer is a generator: it yields the running metric after each chunk of the
data, so a search can prune a hopeless trial early; the last value is the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

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


@dataclass(frozen=True)
class TaskImpl:
    load: Callable      # (task, loaded_model, data, seq_len, limit) -> dataset object
    score: Callable     # (loaded_model, dataset, chunks) -> Iterator[(fraction_done, value)]


IMPLS: dict[str, TaskImpl] = {}


def register(name: str, load: Callable, score: Callable) -> None:
    IMPLS[name] = TaskImpl(load, score)


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


def scores(task: Task, loaded, dataset, chunks: int = 1) -> Iterator[tuple[float, float]]:
    return IMPLS[task.name].score(loaded, dataset, chunks)


KIND_WORDS = {"lm": "a causal language model", "vit": "an image classifier (ViT)"}


def load_data(task: Task, loaded, data: str | None, seq_len: int | None, limit: int | None):
    if loaded.kind != task.model_kind:
        raise UserError(f"task {task.name} needs {KIND_WORDS[task.model_kind]}, but "
                        f"{loaded.spec!r} is {KIND_WORDS[loaded.kind]}; pick a matching --model "
                        "or --task.")
    return IMPLS[task.name].load(task, loaded, data, seq_len, limit)


from . import cifar100, wikitext2  # noqa: E402,F401  (registers the scorers)
