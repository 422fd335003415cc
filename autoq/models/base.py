"""A loaded model and the registry entry that loads one (no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..quant.model import QuantizedModel
    from .kinds import Kind


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
    quantized: QuantizedModel = None  # type: ignore[assignment]  # what autoq did to `model`

    def __post_init__(self):
        from ..quant.model import QuantizedModel

        self.default_task = self.default_task or self.kind.default_task
        if self.quantized is None:
            self.quantized = QuantizedModel(self.model)

    def units(self) -> dict:
        """Layer name -> autoq.quant.layers.Unit: every quantizable matrix of the model."""
        return self.quantized.units

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Layer name -> (in_features, out_features) of every quantizable matrix."""
        return self.quantized.shapes()

    @property
    def structure(self):
        """Blocks and roles of the quantizable layers (autoq.structure), found once."""
        if getattr(self, "_structure", None) is None:
            from .structure import analyse
            self._structure = analyse(self.model, self.units(), self.heads)
        return self._structure

    def keep(self) -> dict[str, str]:
        """Layers a plan's `default` and `--uniform` leave alone, and why: the head, the
        embeddings and routers (list them in a plan, or --whole-model, to quantize them)."""
        from .coverage import kept_by_default
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
