"""Model registry: `--model NAME` -> a loaded model plus what autoq needs to know.

One small module per family registers its names with `@register`. Prefix names
(`hf:<id or path>`, `timm:<name>`) take the rest of the string as an argument.

Importing the registry loads nothing heavy (torch is imported when a model is
loaded): the CLI checks a name, its kind and its `check` before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..kinds import Kind


@dataclass
class LoadedModel:
    spec: str                      # the model spec, e.g. "smollm2" or "hf:/abs/path"
    kind: Kind                     # KINDS["lm"] (causal LM) or KINDS["vit"] (image classifier)
    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    heads: set[str] = field(default_factory=set)   # the model's output layers (lm_head, head)
    tokenizer: Any = None          # LMs
    transform: Callable | None = None  # ViTs: the model's own eval transform
    arch: dict = field(default_factory=dict)       # what rebuilds the skeleton on reload
    default_task: str = ""         # its usual task: the registry entry's, else the kind's
    class_names: list[str] | None = None  # image classifiers: output index -> name, if known

    def __post_init__(self):
        self.default_task = self.default_task or self.kind.default_task

    def units(self) -> dict:
        """Layer name -> autoq.layers.Unit: every quantizable matrix of the model."""
        from ..layers import units_of
        return units_of(self.model)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Layer name -> (in_features, out_features) of every quantizable matrix."""
        return {n: u.shape for n, u in self.units().items()}

    @property
    def structure(self):
        """Blocks and roles of the quantizable layers (autoq.structure), found once."""
        if getattr(self, "_structure", None) is None:
            from ..structure import analyse
            self._structure = analyse(self.model, self.units(), self.heads)
        return self._structure

    def keep(self) -> dict[str, str]:
        """Layers a plan's `default` and `--uniform` leave alone, and why: the head, the
        embeddings and routers (list them in a plan, or --whole-model, to quantize them)."""
        from ..coverage import kept_by_default
        return kept_by_default(self.structure.roles)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    summary: str
    needs: str
    loader: Callable[..., LoadedModel]
    # (arg, checkpoint) -> the arg with local paths made absolute; raises a UserError for
    # what cannot load (a missing folder, bad kwargs, an unreachable hub); loads nothing
    check: Callable[[str, str | None], str] | None = None
    default_task: str | None = None    # None: the kind's usual task


MODELS: dict[str, ModelEntry] = {}


def register(name: str, kind: str, summary: str, needs: str,
             check: Callable[[str, str | None], str] | None = None,
             default_task: str | None = None):
    def deco(fn):
        MODELS[name] = ModelEntry(name, kind, summary, needs, fn, check, default_task)
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
