"""The quantized-model object: a model and everything autoq did to it.

    qm = QuantizedModel(model)              # finds the quantizable layers once
    qm.apply(resolved, device=..., dtype=...)  # layer name -> LayerConfig | None, in place
    qm.applied, qm.installed                # the plan as applied; name -> its packed layer

Works on any `nn.Module` (transformers LMs, timm ViTs) and every layer type of
autoq.quant.layers (linears, Conv1D, embeddings, experts). Applying another plan
re-assigns layers in place (that is how a search moves between trials) and a `None`
restores the original. Packed layers come from a `LayerCache` (autoq.quant.cache).
The pipeline records on the same object what the user is told: the coverage, the
tied layers a plan unties, and the serving report (autoq.serve).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from . import LayerConfig
from .cache import LayerCache
from .layers import LAYER_TYPES, Unit, find


class QuantizedModel:
    def __init__(self, model: nn.Module):
        self.model = model
        self.units, self.originals, self.unsupported = find(model)
        self.applied: dict[str, LayerConfig | None] = {}   # the resolved plan applied so far
        self.installed: dict[str, nn.Module] = {}          # name -> the packed layer in use
        self.cache = LayerCache()
        self.coverage: dict | None = None   # what the plan quantizes (autoq.models.coverage)
        self.ties: list[str] = []           # tied layers the plan unties, in words
        self.serving: dict | None = None    # what serves each quantized layer (autoq.serve)

    # ---- the model's layers -------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, int]]:
        """Layer name -> (in_features, out_features) of every quantizable matrix."""
        return {name: u.shape for name, u in self.units.items()}

    def source(self, unit: Unit) -> tuple:
        """What identifies a unit's matrix (tied layers share one)."""
        return LAYER_TYPES[unit.type].source(self, unit)

    def matrix(self, unit: Unit) -> torch.Tensor:
        """The unit's original weight as (out_features, in_features)."""
        return LAYER_TYPES[unit.type].matrix(self, unit)

    def param(self, unit: Unit) -> nn.Parameter:
        return LAYER_TYPES[unit.type].param(self, unit)

    def view(self, unit: Unit, t: torch.Tensor) -> torch.Tensor:
        """The unit's part of a tensor shaped like its parameter (e.g. its gradient)."""
        return LAYER_TYPES[unit.type].view(self, unit, t)

    def tied_groups(self) -> list[list[str]]:
        """Units that share one matrix (a tied embedding and head), each group sorted."""
        by: dict[tuple, list[str]] = {}
        for unit in self.units.values():
            by.setdefault(self.source(unit), []).append(unit.name)
        return [sorted(names) for names in by.values() if len(names) > 1]

    # ---- quantizing ---------------------------------------------------------------------
    def apply(self, resolved: Mapping[str, LayerConfig | None], *, device: torch.device,
              dtype: torch.dtype, cache: LayerCache | None = None, fast: bool = False,
              progress: Callable[[str], None] | None = None) -> "QuantizedModel":
        """Apply a resolved plan (layer name -> config or None) in place. `fast`: packed
        layers are installed as their dequantized twins (scoring on CPU)."""
        self.cache = cache if cache is not None else self.cache
        for name, cfg in resolved.items():
            unit = self.units[name]
            layer = None if cfg is None else self.cache.get(self, unit, cfg, device, dtype)
            LAYER_TYPES[unit.type].install(
                self, unit, self.cache.dequantized(layer) if fast and layer is not None else layer)
            if layer is None:
                self.installed.pop(name, None)
            else:
                self.installed[name] = layer
            if progress:
                progress(name)
        self.applied = {**self.applied, **resolved}
        return self

    def put(self, name: str, layer: nn.Module) -> None:
        """Install an already packed `layer` (e.g. one read from a saved folder)."""
        unit = self.units[name]
        LAYER_TYPES[unit.type].install(self, unit, layer)
        self.installed[name] = layer
        self.applied = {**self.applied, name: layer_config(layer)}

    @contextmanager
    def unquantized(self, *, device: torch.device, dtype: torch.dtype) -> Iterator[nn.Module]:
        """The model with every original layer back for the block (which may apply other
        plans, from other caches); the plan applied before is applied again afterwards,
        from the layer cache it came from."""
        before, cache = dict(self.applied), self.cache
        self.apply({n: None for n in self.units}, device=device, dtype=dtype)
        try:
            yield self.model
        finally:
            self.apply({n: None for n in self.units}, device=device, dtype=dtype, cache=cache)
            self.apply(before, device=device, dtype=dtype, cache=cache)


def layer_config(layer: nn.Module) -> LayerConfig:
    """The config a packed layer was made with."""
    from . import method_of

    return method_of(layer).config_of(layer)


def quantize_(model: nn.Module, resolved: Mapping[str, LayerConfig | None], *,
              device: torch.device, dtype: torch.dtype, cache: LayerCache | None = None,
              fast: bool = False) -> QuantizedModel:
    """`QuantizedModel(model).apply(...)`: a plan applied to a model not quantized before."""
    return QuantizedModel(model).apply(resolved, device=device, dtype=dtype, cache=cache,
                                       fast=fast)
