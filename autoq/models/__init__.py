"""Model registry: `--model NAME` -> a loaded model plus what autoq needs to know.

One small module per family registers its names with `@register`. Prefix names
(`hf:<id or path>`, `timm:<name>`) take the rest of the string as an argument.

Importing the registry loads nothing heavy (torch is imported when a model is
loaded): the CLI checks a name, its kind and its `check` before any model loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError
from .base import MODELS, LoadedModel, ModelEntry, register  # noqa: F401  (its API)

if TYPE_CHECKING:
    import torch


def entry_for(spec: str) -> tuple[ModelEntry, str]:
    if spec in MODELS:
        return MODELS[spec], ""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix + ":" in MODELS and rest:
        return MODELS[prefix + ":"], rest
    names = ", ".join(sorted(MODELS))
    raise UserError(f"unknown model {spec!r}; use one of {names} (see `autoq models`).")


def check_model(spec: str, checkpoint: str | None = None) -> str:
    """`spec` checked without loading anything, with local paths made absolute
    (`hf:rel/dir` -> `hf:/abs/rel/dir`); hub ids and registry names stay as typed."""
    entry, arg = entry_for(spec)
    if entry.check is None:
        return spec
    arg = entry.check(arg, checkpoint)
    return entry.name + arg if entry.name.endswith(":") else spec


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               checkpoint: str | None = None) -> LoadedModel:
    import torch

    entry, arg = entry_for(spec)
    loaded = entry.loader(arg, device=torch.device(device), dtype=dtype or torch.float32,
                          checkpoint=checkpoint)
    loaded.spec = spec
    loaded.default_task = entry.default_task or loaded.default_task
    loaded.model.eval().requires_grad_(False)
    loaded.heads = loaded.kind.heads(loaded.model)
    return loaded


def pick_device(device: str | None) -> torch.device:
    """`auto` -> cuda if there is one, else cpu."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA GPU; use --device cpu.")
    return torch.device(device)


DTYPES = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """`auto` -> fp16 on GPU, fp32 on CPU."""
    import torch

    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}.")
    return getattr(torch, TORCH_DTYPES[dtype])


from . import hf, vit  # noqa: E402,F401  (registers the families)
