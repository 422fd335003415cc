"""The pipeline: load a model, quantize it with a plan, serve it, evaluate it.

Every way into autoq runs these steps, defined once here:

    loaded = load(spec, device, dtype)        # a registered model, on its device
    resolved = resolve(loaded, plan)           # the plan against the model's layers
    size = quantize(loaded, resolved)          # packed layers in place; exact size
    serving = serve(loaded, backend)           # kernels per layer, and why not
    metrics = evaluate(loaded, task, data)     # the task's metrics

- `autoq eval` / `autoq search`: `Evaluator` (evaluator.py) loads once, then runs
  quantize, serve and evaluate per plan, on the search or the report split;
- `autoq apply`: quantize, save, reload, serve, verify (apply.py);
- `autoq.load(folder)` and `autoq.quantize(model, plan)`: open / wrap, quantize, serve
  (autoq.api).

What each step did is kept on the quantized-model object (`loaded.quantized`: the
plan applied, coverage, ties, serving report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..models import LoadedModel, load_model, pick_device, pick_dtype
from ..models.coverage import of_model
from ..plan import Plan, tie_notes
from ..quant import LayerConfig
from ..quant.cache import LayerCache
from ..quant.size import Size, measure
from ..serve import BACKENDS, require_backend
from ..serve.backend import prepare_

Resolved = Mapping[str, "LayerConfig | None"]


def load(spec: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
         checkpoint: str | None = None) -> LoadedModel:
    """A registered model (`--model` spec) on `device` ("auto": cuda if there is one) in
    `dtype` ("auto": fp16 on GPU, fp32 on CPU)."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, dev)
    return load_model(spec, dev, dt, checkpoint)


def resolve(loaded: LoadedModel, plan: Plan, source: str = "plan") -> dict[str, LayerConfig | None]:
    """Every quantizable layer of the model -> its config in `plan` (checked against
    the layer's shape; `default` leaves the head, embeddings and routers alone)."""
    return plan.resolve(loaded.shapes(), loaded.keep(), source)


def quantize(loaded: LoadedModel, resolved: Resolved, *, cache: LayerCache | None = None,
             fast: bool = False, reasons: Mapping[str, str] | None = None) -> Size:
    """Apply `resolved` in place (packed layers from `cache`; `fast`: their dequantized
    twins, for scoring on CPU) and record what it quantizes (coverage, with `reasons`
    for the layers kept) and which tied layers it unties. The exact size."""
    qm = loaded.quantized
    qm.apply(resolved, device=loaded.device, dtype=loaded.dtype, cache=cache, fast=fast)
    qm.coverage = of_model(loaded, resolved, reasons)
    qm.ties = tie_notes(resolved, qm.tied_groups())
    return measure(qm)


def serve(loaded: LoadedModel, backend: str, release: bool = False) -> dict:
    """Convert the quantized layers `backend` serves (autoq.serve); the serving report.
    `release`: the model is only served from now on (packed copies dropped)."""
    return prepare_(loaded.quantized, backend, release)


def evaluate(loaded: LoadedModel, task, dataset, reference: Mapping | None = None) -> dict:
    """The task's metrics on all of `dataset` (KL with the fp model's `reference`)."""
    return task.score(loaded, dataset, reference)


def open_folder(folder: str | Path, device: str = "auto", backend: str = "auto",
                dtype: str = "auto") -> tuple[LoadedModel, dict]:
    """A folder written by `autoq apply`, loaded on `device` in `dtype` and served by
    `backend` ("auto": the device's fastest installed backend): (the model, the
    serving report). dtype "auto" is the backend's compute dtype when it has one
    (torch-int4: bf16) and the model takes token ids, else fp16 on a GPU and fp32 on a
    CPU. Only served from now on:
    the converted layers drop their packed copies."""
    from ..models import saved

    dev = pick_device(device)
    name = require_backend(backend, dev)
    computes_in = BACKENDS.get(name).computes_in
    dt = getattr(torch, computes_in) if dtype == "auto" and computes_in and \
        saved.kind_of(folder).low_precision_inputs else pick_dtype(dtype, dev)
    loaded = saved.load(folder, dev, dt)
    return loaded, serve(loaded, name, release=True)
