"""Evaluation tasks: `eval/<name>.yaml` declares the data and defaults; a scorer module
registered in `SCORERS` under the same name computes the metric.

A scorer is a generator of per-unit values, in data order: the mean next-token
NLL of each window (wikitext2), 1/0 for each image's top-1 hit (cifar100). The
metric is a fixed function of their mean (`Metric.link`, autoq.metrics), so a
search can stop a trial after part of the data and estimate the rest
(autoq.search.estimate). Importing this package imports no torch: the CLI checks
task names, data paths and counts with the functions below; a scorer module is
imported when its task is first used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import yaml

from ..errors import UserError
from ..io import resource_dir
from ..metrics import METRICS
from ..models.kinds import KINDS

SCORERS = {"wikitext2": "autoq.tasks.wikitext2", "cifar100": "autoq.tasks.cifar100",
           "digits": "autoq.tasks.digits"}   # task name (its eval/<name>.yaml) -> scorer


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
        return METRICS[metric or self.metric].higher_is_better

    def metric_of(self, units: Sequence[float], metric: str | None = None) -> float:
        """The metric from per-unit values: exp(mean NLL), the hit rate, the mean KL."""
        return METRICS[metric or self.metric].link(sum(units) / len(units))

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
        from . import kld

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


def get_task(name: str) -> Task:
    spec = task_spec(name)
    if name not in SCORERS:
        raise UserError(f"task {name!r} has no scorer registered; reinstall autoq.")
    importlib.import_module(SCORERS[name])   # registers its scorer
    return Task(spec["name"], spec["model_kind"], spec["metric"], spec)


# ---- the tasks' YAML and the checks the CLI runs first (no torch) --------------------------
def task_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("eval").glob("*.yaml"))


def task_spec(name: str) -> dict:
    path = resource_dir("eval") / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown task {name!r}; use one of {', '.join(task_names())}.")
    return yaml.safe_load(path.read_text())


def check_task_fits(spec: dict, model: str, kind: str) -> None:
    """The task scores this kind of model (`model_kind` in its YAML)."""
    if spec["model_kind"] != kind:
        raise UserError(f"task {spec['name']} needs {KINDS[spec['model_kind']].words}, but "
                        f"{model!r} is {KINDS[kind].words}; pick a matching --model or --task.")


def check_data_path(data: str | None, want_dir: bool | None,
                    flag: str = "--data") -> Path | None:
    """`--data` exists, and is a folder or a file as the task reads it (None: either)."""
    if data is None:
        return None
    p = Path(data)
    kind = {True: "folder", False: "file", None: "file or folder"}[want_dir]
    if not p.exists():
        raise UserError(f"{flag} {data}: no such {kind}.")
    if want_dir is not None and want_dir != p.is_dir():
        raise UserError(f"{flag} {data}: expected a {kind}.")
    return p


def at_least(flag: str, value: int | None, low: int, what: str) -> None:
    if value is not None and value < low:
        raise UserError(f"{flag} {value} must be at least {low} ({what}).")


def check_counts(seq_len: int | None, limit: int | None) -> None:
    """`--seq-len` and `--limit` (the CLI checks them first; `Task.load` again, for
    library callers)."""
    at_least("--seq-len", seq_len, 2, "tokens per window")
    at_least("--limit", limit, 1, "windows or images to score; leave it out to use all")
