"""The pipeline for many plans: one model + one task, loaded once, evaluated under any
number of plans (autoq.pipeline's steps, run per plan).

`autoq eval` runs it once; `autoq search` keeps one Evaluator for the whole
study, so the model, the tokenized data and the quantized-layer cache are
shared by every trial. A task has two splits: configs are scored on the *search*
split (`--data`), and a search reports its chosen configs on the *report* split
(`--report-data`), loaded when first asked for. With the fp model's reference
distributions of a split (autoq.kld) every evaluation also measures the KL.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..models import pick_device, pick_dtype
from ..plan import Plan
from ..progress import say
from ..quant import LayerConfig
from ..quant.cache import LayerCache
from ..quant.size import Size
from ..serve import BACKENDS, require_backend
from ..serve.backend import fallback_line, plan_serving
from ..tasks import get_task
from ..tasks.kld import Top
from . import load, quantize, resolve, serve


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    model: str = "smollm2"
    task: str | None = None          # None: the model's usual task (registry entry, else kind)
    data: str | None = None
    seq_len: int | None = None
    limit: int | None = None
    checkpoint: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str | None = None     # on-disk layer cache (None: memory only)
    backend: str = "auto"            # serving kernels: auto (gemlite on CUDA), gemlite, hqq
    report_data: str | None = None   # the report split's data (None: the task's own)
    report_limit: int | None = None  # first N units of the report split (None: all)


@dataclass
class Split:
    """One split of the task's data as scored: the units in a fixed shuffled order (so
    that the units seen first are a random sample of all of them: a search may stop
    after part of the data, see autoq.estimate), and the fp reference for KL."""
    name: str
    dataset: object
    shuffled: object
    protocol: str
    total: int
    reference: dict | None = None


class Evaluator:
    def __init__(self, s: EvalSettings):
        self.settings = s
        self.device = pick_device(s.device)
        self.dtype = pick_dtype(s.dtype, self.device)
        self.backend = require_backend(s.backend, self.device)
        say(f"loading model {s.model} on {self.device} ({str(self.dtype).removeprefix('torch.')})")
        self.loaded = load(s.model, self.device, self.dtype, s.checkpoint)
        self.task = get_task(s.task or self.loaded.default_task)
        self.splits: dict[str, Split] = {}
        self.shapes = self.loaded.shapes()
        self.cache = LayerCache(s.cache_dir)
        # A search on CPU scores trials from dequantized weights (quant.modules.Dequantized)
        self.fast_scoring = False

    def split(self, name: str) -> Split:
        """The split `name` ("search" or "report"), loaded once."""
        if name not in self.splits:
            s = self.settings
            data, limit = (s.data, s.limit) if name == "search" else \
                (s.report_data if s.report_data is not None else s.data, s.report_limit)
            say(f"loading {self.task.name} data ({name} split)")
            dataset = self.task.load(self.loaded, data, s.seq_len, limit, name)
            total = self.task.count(dataset)
            order = list(range(total))
            random.Random(0).shuffle(order)
            self.splits[name] = Split(name, dataset, self.task.take(dataset, order),
                                      self.task.protocol(dataset), total)
        return self.splits[name]

    def calibration(self, n: int, tokens: int | None = None) -> str:
        """A split of the search split's first `n` units (each cut to its first `tokens`
        tokens, for LMs), with its reference: for one-shot measurements on a few units;
        returns its name."""
        name = f"calibration-{n}-{tokens}"
        if name not in self.splits:
            sp = self.search
            subset = self.task.take(sp.dataset, range(min(n, sp.total)))
            if tokens is not None:
                subset = self.task.shorten(subset, tokens)
            total = self.task.count(subset)
            rows = None if tokens is None else tokens - 1   # next-token predictions
            reference = None if sp.reference is None else \
                {u: Top(*(t[:rows] for t in sp.reference[u])) for u in subset.index}
            self.splits[name] = Split(name, subset, subset, self.task.protocol(subset), total,
                                      reference)
        return name

    @property
    def search(self) -> Split:
        return self.split("search")

    @property
    def dataset(self):
        return self.search.dataset

    @property
    def protocol(self) -> str:
        """The search split's protocol."""
        return self.search.protocol

    @property
    def total(self) -> int:
        """How many units (windows, images) the search split has."""
        return self.search.total

    def resolve(self, plan: Plan, source: str = "plan") -> dict[str, LayerConfig | None]:
        return resolve(self.loaded, plan, source)

    def apply(self, resolved: Mapping[str, LayerConfig | None], fast: bool = False,
              reasons: Mapping[str, str] | None = None) -> Size:
        return quantize(self.loaded, resolved, cache=self.cache, fast=fast, reasons=reasons)

    def _swap(self, resolved: Mapping[str, LayerConfig | None], fast: bool = False) -> None:
        """The same plan's layers as dequantized twins (`fast`) or packed again."""
        self.loaded.quantized.apply(resolved, device=self.device, dtype=self.dtype,
                                    cache=self.cache, fast=fast)

    def serve(self, resolved: Mapping[str, LayerConfig | None],
              reasons: Mapping[str, str] | None = None) -> tuple[Size, dict]:
        """Quantize per `resolved` (size measured on the packed layers), then convert what
        the serving backend supports; says which layers fall back."""
        size = self.apply(resolved, reasons=reasons)
        served = serve(self.loaded, self.backend)
        if served["fallback"]:
            say(fallback_line(served["fallback"]))
        return size, served

    def run(self, resolved: Mapping[str, LayerConfig | None], *, speed: bool = True,
            check_every: int | None = None,
            stop: Callable[[dict[str, list[float]]], bool] | None = None,
            done: Mapping[str, list[float]] | None = None, split: str = "search",
            capture: dict | None = None, reasons: Mapping[str, str] | None = None) -> dict:
        """Quantize per `resolved`, then score the split. Every `check_every` units (and
        once before the first), `stop(units so far)` may end the scoring early: the
        metrics are then on the part seen, `fraction` < 1. The per-unit values are
        returned under `units` (metric -> values), in scoring order (the same fixed
        shuffle every time); "kld" is measured when the split has a reference.
        `done`: the first units of this same config, scored before: only the rest is
        scored (each unit is scored on its own, so the result is the same). `capture`
        collects this model's own top-k per unit (for the fp model: the reference)."""
        sp = self.split(split)
        # quality through the backend's kernels when they compute in this run's dtype (else
        # through the method's own arithmetic; the backend then serves the speed only)
        through = BACKENDS.get(self.backend).computes_in in (None, str(self.dtype)[6:])
        if through:
            size, served = self.serve(resolved, reasons)
        else:
            size = self.apply(resolved, reasons=reasons)
            served = plan_serving(self.loaded.quantized, self.backend)[0]
        t = time.perf_counter()
        fast = self.fast_scoring and not (through and self.backend != "hqq")
        if fast:  # score from once-dequantized weights: same outputs, no per-call unpacking
            self._swap(resolved, fast=True)
        names = [self.task.metric] + (["kld"] if sp.reference is not None else [])
        seen = {m: list((done or {}).get(m, ())) for m in names}
        start = min(len(v) for v in seen.values())
        seen = {m: v[:start] for m, v in seen.items()}
        rest = self.task.take(sp.shuffled, range(start, sp.total))
        try:
            if start < sp.total and (stop is None or not stop(seen)):
                for row in self.task.units(self.loaded, rest, sp.reference, capture):
                    for m in names:
                        seen[m].append(row[m])
                    n = len(seen[self.task.metric])
                    if stop is not None and check_every and n % check_every == 0 \
                            and n < sp.total and stop(seen):
                        break
        finally:
            if fast:
                self._swap(resolved)  # back to the packed layers (for speed, saving)
        n = len(seen[self.task.metric])
        out = {m: (self.task.metric_of(v, m) if v else float("nan")) for m, v in seen.items()}
        out.update({"size_mib": size.size_mib, "memory_mib": size.memory_mib,
                    "bits_per_weight": size.bits_per_weight,
                    "model_bits_per_weight": size.model_bits_per_weight,
                    "quantized_layers": sum(c is not None for c in resolved.values()),
                    **served, "eval_seconds": time.perf_counter() - t,
                    "fraction": n / sp.total, "units": seen})
        if speed:
            if fast or not through:   # the speed of the model as served
                size, served = self.serve(resolved, reasons)
                out.update(served)
            out.update(self.speed(size))
        out["memory_mib"] = served.get("memory_mib", size.memory_mib)  # as served, if it was
        out["protocol"] = sp.protocol
        out["device"] = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" \
            else "cpu"
        return out

    def measure_reference(self, split: str = "search", speed: bool = False) -> tuple[dict, dict]:
        """One pass of the unquantized model over a split, keeping its distributions:
        (the reference for KL (autoq.kld), the fp metrics with their units; its KL from
        itself is 0; `speed`: its speed measured too)."""
        reference: dict = {}
        self.split(split).reference = None
        say(f"scoring the unquantized model on the {split} split (the reference for KL)")
        metrics = self.run({n: None for n in self.shapes}, speed=speed, split=split,
                           capture=reference)
        return reference, {**metrics, "kld": 0.0}

    def use_reference(self, reference: dict, split: str = "search") -> None:
        """Measure KL from now on, against `reference`, on that split."""
        self.split(split).reference = reference

    def speed(self, size: Size) -> dict:
        """The measured speed of the model as it is now (tokens/s or images/s)."""
        return self.loaded.kind.speed(self.loaded, size.size_bytes)
