"""Model registry: `--model NAME` -> a loaded model plus what autoq needs to know.

One small module per family registers its names with `@register`. Prefix names
(`hf:<id or path>`, `timm:<name>`) take the rest of the string as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError
from ..kinds import Kind


@dataclass
class LoadedModel:
    spec: str                      # what the user typed, e.g. "smollm2" or "hf:/path"
    kind: Kind                     # KINDS["lm"] (causal LM) or KINDS["vit"] (image classifier)
    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    heads: set[str] = field(default_factory=set)   # the model's output layers (lm_head, head)
    tokenizer: Any = None          # LMs
    transform: Callable | None = None  # ViTs: the model's own eval transform
    arch: dict = field(default_factory=dict)       # what rebuilds the skeleton on reload
    default_task: str = ""         # its usual task: the registry entry's, else the kind's

    def __post_init__(self):
        self.default_task = self.default_task or self.kind.default_task

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Full module name -> (in_features, out_features) of every linear layer."""
        from ..quantize import linear_shapes
        return linear_shapes(self.model)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    summary: str
    needs: str
    loader: Callable[..., LoadedModel]
    default_task: str | None = None    # None: the kind's usual task


MODELS: dict[str, ModelEntry] = {}


def register(name: str, kind: str, summary: str, needs: str, default_task: str | None = None):
    def deco(fn):
        MODELS[name] = ModelEntry(name, kind, summary, needs, fn, default_task)
        return fn
    return deco


def entry_for(spec: str) -> tuple[ModelEntry, str]:
    if spec in MODELS:
        return MODELS[spec], ""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix + ":" in MODELS and rest:
        return MODELS[prefix + ":"], rest
    names = ", ".join(sorted(MODELS))
    raise UserError(f"unknown model {spec!r}; use one of {names} (see `autoq models`).")


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               checkpoint: str | None = None) -> LoadedModel:
    entry, arg = entry_for(spec)
    loaded = entry.loader(arg, device=torch.device(device), dtype=dtype, checkpoint=checkpoint)
    loaded.spec = spec
    loaded.default_task = entry.default_task or loaded.default_task
    loaded.model.eval().requires_grad_(False)
    loaded.heads = loaded.kind.heads(loaded.model)
    return loaded


def pick_device(device: str | None) -> torch.device:
    """`auto` -> cuda if there is one, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA GPU; use --device cpu.")
    return torch.device(device)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """`auto` -> fp16 on GPU, fp32 on CPU."""
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


from . import hf, vit  # noqa: E402,F401  (registers the families)
