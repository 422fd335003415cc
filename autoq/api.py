"""The Python API: `autoq.load` runs a saved folder, `autoq.quantize` applies a plan to a
model you loaded yourself. Both are autoq.pipeline's steps.

    model, tokenizer = autoq.load("results/<study>/best-model")    # an LM folder
    model, transform = autoq.load("results/<study>/best-model")    # a ViT folder
    report = autoq.quantize(my_model, "results/<study>/best.json")  # in place

Both return plain objects (a transformers / timm model, a dict) and print nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple

from torch import nn

from .errors import UserError


class Loaded(NamedTuple):
    """A saved model ready to run, and what prepares its input: for an LM the tokenizer,
    for an image classifier its eval transform (a PIL image -> a tensor)."""
    model: nn.Module
    processor: Any


def load(folder: str | Path, device: str = "auto", backend: str = "auto",
         dtype: str = "auto") -> Loaded:
    """A folder written by `autoq apply`, ready to run: `(model, processor)`. The model
    is the transformers (or timm) model with its planned layers quantized, in eval
    mode, without gradients, its quantized layers served by `backend` ("auto": the
    device's fastest installed one); `model.generate` works as usual."""
    from .pipeline import open_folder

    loaded, _ = open_folder(folder, device, backend, dtype)
    return Loaded(loaded.model, loaded.kind.processor(loaded))


def as_plan(plan: Any):
    """A Plan from a plan file path, a Plan, or a plan's JSON object (whose `format`,
    `model` and `layers` may be left out)."""
    from .plan import FORMAT, Plan

    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, Path)):
        return Plan.load(plan)
    if isinstance(plan, Mapping):
        return Plan.from_json({"format": FORMAT, "model": "your model", "layers": {}, **plan})
    raise UserError(f"plan {type(plan).__name__}: give a plan file path, a Plan or a dict "
                    "like {\"default\": {\"nbits\": 4, \"group_size\": 64}}.")


def quantize(model: nn.Module, plan: Any, *, backend: str = "auto",
             cache_dir: str | Path | None = None) -> dict:
    """Quantize `model` in place with `plan`, on the device and in the dtype of its
    weights; layer names are `model.named_modules()` names (the plan's `model` field
    is not used). Returns what it did: `layers_quantized`, `size_mib` (16-bit
    storage), `memory_mib`, `bits_per_weight`, `model_bits_per_weight`, `coverage`,
    `ties` (tied layers the plan unties), and the serving report of `backend`
    ("auto": the device's fastest installed backend)."""
    from . import pipeline
    from .models import LoadedModel
    from .models.kinds import kind_of
    from .quant.cache import LayerCache
    from .serve import require_backend

    the_plan = as_plan(plan)
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is None:
        raise UserError("model has no floating-point weights to quantize; pass the loaded model.")
    kind = kind_of(model)
    loaded = LoadedModel(the_plan.model, kind, model, weight.device, weight.dtype,
                         heads=kind.heads(model))
    resolved = pipeline.resolve(loaded, the_plan,
                                str(plan) if isinstance(plan, (str, Path)) else "plan")
    name = require_backend(backend, weight.device)
    size = pipeline.quantize(loaded, resolved, cache=LayerCache(cache_dir))
    serving = pipeline.serve(loaded, name)
    return {"layers_quantized": sum(c is not None for c in resolved.values()),
            "size_mib": size.size_mib, "memory_mib": size.memory_mib,
            "bits_per_weight": size.bits_per_weight,
            "model_bits_per_weight": size.model_bits_per_weight,
            "coverage": loaded.quantized.coverage, "ties": loaded.quantized.ties, **serving}
