"""One model + one task, loaded once, evaluated under any number of plans.

`autoq eval` runs it once; `autoq search` keeps one Evaluator for the whole
study, so the model, the tokenized data and the quantized-layer cache are
shared by every trial.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .backends import prepare_, require_backend
from .models import load_model, pick_device, pick_dtype
from .plan import LayerConfig, Plan
from .progress import say
from .quantize import LayerCache, quantize_
from .size import Size, measure
from .tasks import get_task


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


class Evaluator:
    def __init__(self, s: EvalSettings):
        self.settings = s
        self.device = pick_device(s.device)
        self.dtype = pick_dtype(s.dtype, self.device)
        self.backend = require_backend(s.backend, self.device)
        say(f"loading model {s.model} on {self.device} ({str(self.dtype).removeprefix('torch.')})")
        self.loaded = load_model(s.model, self.device, self.dtype, s.checkpoint)
        self.task = get_task(s.task or self.loaded.default_task)
        say(f"loading {self.task.name} data")
        self.dataset = self.task.load(self.loaded, s.data, s.seq_len, s.limit)
        self.shapes = self.loaded.shapes()
        # scoring order: a fixed shuffle, so that the units seen first are a random sample
        # of all of them (a search may stop after part of the data; see autoq.estimate)
        order = list(range(self.total))
        random.Random(0).shuffle(order)
        self.shuffled = self.task.take(self.dataset, order)
        self.cache = LayerCache(s.cache_dir)
        # A search on CPU scores trials from dequantized weights (see quantize.Dequantized)
        self.fast_scoring = False

    @property
    def protocol(self) -> str:
        return self.task.protocol(self.dataset)

    @property
    def total(self) -> int:
        """How many units (windows, images) the data has."""
        return self.task.count(self.dataset)

    def resolve(self, plan: Plan, source: str = "plan") -> dict[str, LayerConfig | None]:
        return plan.resolve(self.shapes, self.loaded.keep(), source)

    def coverage(self, resolved: Mapping[str, LayerConfig | None],
                 reasons: Mapping[str, str] | None = None) -> dict:
        """What `resolved` quantizes of the model (autoq.coverage)."""
        from .coverage import of_model

        return of_model(self.loaded, resolved, reasons)

    def tie_notes(self, resolved: Mapping[str, LayerConfig | None]) -> list[str]:
        from .layers import tied_groups
        from .plan import tie_notes

        return tie_notes(resolved, tied_groups(self.loaded.model))

    def apply(self, resolved: Mapping[str, LayerConfig | None], fast: bool = False) -> None:
        quantize_(self.loaded.model, resolved, device=self.device, dtype=self.dtype,
                  cache=self.cache, fast=fast)

    def serve(self, resolved: Mapping[str, LayerConfig | None]) -> tuple[Size, dict]:
        """Quantize per `resolved` (size measured on the HQQ layers), then convert what
        the serving backend supports; says which layers fall back."""
        self.apply(resolved)
        size = measure(self.loaded.model)
        served = prepare_(self.loaded.model, self.backend) if self.backend == "gemlite" else \
            {"backend": self.backend, "gemlite_layers": 0, "fallback": {}}
        if served["fallback"]:
            say(f"{len(served['fallback'])} layers stay on hqq's torch backend: "
                + "; ".join(f"{n}: {why}" for n, why in served["fallback"].items()))
        return size, served

    def run(self, resolved: Mapping[str, LayerConfig | None], *, speed: bool = True,
            check_every: int | None = None,
            stop: Callable[[list[float]], bool] | None = None,
            done: list[float] | None = None) -> dict:
        """Quantize per `resolved`, then score. Every `check_every` units (and once
        before the first), `stop(units so far)` may end the scoring early: the
        metric is then on the part seen, `fraction` < 1. The per-unit values are
        returned under `units`, in scoring order (the same fixed shuffle every time).
        `done`: the first units of this same config, scored before: only the rest is
        scored (each window / image is scored on its own, so the result is the same)."""
        size, served = self.serve(resolved)
        t = time.perf_counter()
        fast = self.fast_scoring and self.backend == "hqq"
        if fast:  # score from once-dequantized weights: same outputs, no per-call unpacking
            self.apply(resolved, fast=True)
        total, seen = self.total, list(done or [])
        rest = self.task.take(self.shuffled, range(len(seen), total))
        try:
            if len(seen) < total and (stop is None or not stop(seen)):
                for value in self.task.units(self.loaded, rest):
                    seen.append(value)
                    if stop is not None and check_every and len(seen) % check_every == 0 \
                            and len(seen) < total and stop(seen):
                        break
        finally:
            if fast:
                self.apply(resolved)  # back to the HQQ layers (for speed, saving)
        value = self.task.metric_of(seen) if seen else float("nan")
        out = {self.task.metric: value, "size_mib": size.size_mib,
               "memory_mib": size.memory_mib, "bits_per_weight": size.bits_per_weight,
               "model_bits_per_weight": size.model_bits_per_weight,
               "quantized_layers": sum(c is not None for c in resolved.values()),
               **served,
               "eval_seconds": time.perf_counter() - t, "fraction": len(seen) / total,
               "units": seen}
        if speed:
            out.update(self.speed(size))
        out["protocol"] = self.protocol
        out["device"] = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" \
            else "cpu"
        return out

    def speed(self, size: Size) -> dict:
        """The measured speed of the model as it is now (tokens/s or images/s)."""
        return self.loaded.kind.speed(self.loaded, size.size_bytes)
