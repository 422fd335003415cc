"""`quantize_(model, resolved plan)`: quantize the planned layers with HQQ, by full name.

Works on any `nn.Module` (transformers LMs, timm ViTs) and every layer type of
autoq.layers (linears, Conv1D, embeddings, experts). The first call finds the
model's quantizable layers and remembers the originals, so calling it again with
another plan re-assigns layers in place (that is how a search moves between trials)
and a `None` restores the original. Quantized layers come from a `LayerCache`:
within a process a (matrix, nbits, group_size) is quantized at most once (a tied
embedding and head are one matrix: they get one quantized tensor); with a folder,
results are also reused across runs, keyed by a hash of the weights, the config and
the hqq/torch versions so a stale entry can never match.
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from .io import write_atomic
from .layers import Unit, install, quantize_unit, source_of, units_of
from .plan import LayerConfig

APPLIED = "_autoq_applied"       # the resolved plan applied last
INSTALLED = "_autoq_installed"   # unit name -> the quantized layer it uses now
CACHE = "_autoq_cache"


def shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Full name -> (in_features, out_features) of every quantizable matrix."""
    return {name: u.shape for name, u in units_of(model).items()}


def hqq_config(cfg: LayerConfig, optimize: bool = True) -> dict:
    """The quant-config dict HQQLinear expects (axis=1, as gemlite serves); without
    `optimize`, the same packing without HQQ's solver (fast; for timing layers)."""
    from hqq.core.quantize import BaseQuantizeConfig

    quant = BaseQuantizeConfig(nbits=cfg.nbits, group_size=cfg.group_size, axis=1)
    quant["weight_quant_params"]["optimize"] = optimize
    return quant


def quantize_matrix(weight: torch.Tensor, bias: torch.Tensor | None, cfg: LayerConfig,
                    device: torch.device, dtype: torch.dtype, cls: type | None = None,
                    optimize: bool = True) -> nn.Module:
    """One HQQ layer (`cls`, default QuantLinear) of an (out, in) matrix, quantized on
    `device`. Scales and zeros are stored in 16 bits (the compute dtype on GPU, fp16 on
    a CPU computing in fp32), so a layer costs nbits + 32/group_size bits per weight."""
    from .qmodules import QuantLinear

    layer = (cls or QuantLinear).from_weights(weight.contiguous(), bias, hqq_config(cfg, optimize),
                                              compute_dtype=dtype, device=str(device),
                                              del_orig=True)
    return meta_16bit(layer)


def meta_16bit(layer: nn.Module) -> nn.Module:
    """Keep an HQQ layer's scale and zero in 16 bits (the compute dtype if that is
    fp16/bf16, else fp16). HQQ widens them to the compute dtype whenever it moves or
    loads a layer, so every quantized or loaded layer goes through here."""
    dtype = layer.compute_dtype
    meta_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
    for key in ("scale", "zero"):
        layer.meta[key] = layer.meta[key].to(meta_dtype)
    return layer


class Dequantized(nn.Module):
    """An HQQ layer scored from its matrix dequantized once: the same arithmetic as
    HQQ's torch forward (x @ dequantize().T, then + bias) without unpacking the bits
    on every call. For scoring many windows / trials on CPU only; size, speed and
    saving always use the HQQ layer itself (`.hqq`)."""

    def __init__(self, hqq: nn.Module):
        super().__init__()
        object.__setattr__(self, "hqq", hqq)  # not a submodule: counted / saved once
        self.register_buffer("weight", hqq.dequantize(), persistent=False)
        self.bias = hqq.bias

    def dequantize(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x, self.weight.t())
        return out + self.bias if self.bias is not None else out


class LayerCache:
    """(matrix, nbits, group_size) -> quantized layer; optional on-disk copy."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder else None
        self.memory: dict[tuple, nn.Module] = {}
        self.quantized: list[tuple[str, LayerConfig]] = []  # what was really computed
        self.disk_hits = 0
        self._weight_hash: dict[tuple, str] = {}
        self._dequantized: dict[int, Dequantized] = {}

    def dequantized(self, layer: nn.Module) -> Dequantized:
        """The scoring twin of a cached HQQ layer (made once per layer object)."""
        if id(layer) not in self._dequantized:
            self._dequantized[id(layer)] = Dequantized(layer)
        return self._dequantized[id(layer)]

    def get(self, model: nn.Module, unit: Unit, cfg: LayerConfig, device: torch.device,
            dtype: torch.dtype) -> nn.Module:
        key = (source_of(model, unit), cfg, str(device), dtype)
        if key not in self.memory:
            self.memory[key] = self._load(model, unit, cfg, device, dtype) \
                or self._compute(model, unit, cfg, device, dtype)
        return self.memory[key]

    def _compute(self, model, unit, cfg, device, dtype) -> nn.Module:
        layer = quantize_unit(model, unit, lambda w, b, cls: quantize_matrix(
            w, b, cfg, device, dtype, cls))
        self.quantized.append((unit.name, cfg))
        if self.folder is not None:
            buf = io.BytesIO()
            layer.encoded_state_dict = False
            torch.save({k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                        for k, v in layer.state_dict().items()}, buf)
            write_atomic(self._path(model, unit, cfg, device, dtype), buf.getvalue(), sync=False)
        return layer

    def _load(self, model, unit, cfg, device, dtype) -> nn.Module | None:
        if self.folder is None:
            return None
        path = self._path(model, unit, cfg, device, dtype)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            layer = quantize_unit(model, unit, lambda w, b, cls: cls(
                None, None, compute_dtype=dtype, device=str(device)))
            layer.load_state_dict(state)
            meta_16bit(layer)
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None
        self.disk_hits += 1
        return layer

    def _path(self, model, unit, cfg, device, dtype) -> Path:
        source = source_of(model, unit)
        if source not in self._weight_hash:
            h = hashlib.sha256()
            matrix = quantize_unit(model, unit, lambda w, b, cls: (w, b))
            for t in matrix:
                if t is not None:
                    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._weight_hash[source] = h.hexdigest()
        key = "|".join([self._weight_hash[source], cfg.label, "axis1", str(dtype), device.type,
                        "hqq", version("hqq"), "torch", torch.__version__.split("+")[0],
                        "meta16"])
        return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".pt")


def quantize_(model: nn.Module, resolved: Mapping[str, LayerConfig | None], *,
              device: torch.device, dtype: torch.dtype, cache: LayerCache | None = None,
              fast: bool = False, progress: Callable[[str], None] | None = None) -> nn.Module:
    """Apply a resolved plan (layer name -> config or None) to `model` in place.
    `fast`: quantized layers are installed as their dequantized twins (CPU scoring)."""
    units = units_of(model)
    cache = cache if cache is not None else getattr(model, CACHE, None) or LayerCache()
    installed: dict[str, nn.Module] = getattr(model, INSTALLED, {})
    for name, cfg in resolved.items():
        layer = None if cfg is None else cache.get(model, units[name], cfg, device, dtype)
        install(model, units[name], cache.dequantized(layer) if fast and layer is not None
                else layer)
        if layer is None:
            installed.pop(name, None)
        else:
            installed[name] = layer
        if progress:
            progress(name)
    object.__setattr__(model, APPLIED, {**getattr(model, APPLIED, {}), **resolved})
    object.__setattr__(model, INSTALLED, installed)
    object.__setattr__(model, CACHE, cache)
    return model


def layer_config(layer: nn.Module) -> LayerConfig:
    """The LayerConfig an HQQ layer was quantized with."""
    group = layer.meta["group_size"]
    return LayerConfig.from_json({"nbits": layer.meta["nbits"],
                                  "group_size": None if group == layer.in_features else group})


def put(model: nn.Module, unit: Unit, layer: nn.Module) -> None:
    """Install an already quantized `layer` for `unit` (e.g. one read from a saved folder)."""
    install(model, unit, layer)
    object.__setattr__(model, INSTALLED, {**getattr(model, INSTALLED, {}), unit.name: layer})
    object.__setattr__(model, APPLIED, {**getattr(model, APPLIED, {}),
                                        unit.name: layer_config(layer)})


def installed(model: nn.Module) -> dict[str, nn.Module]:
    """Layer name -> the HQQ layer it uses now (never a twin)."""
    return dict(getattr(model, INSTALLED, {}))


@contextmanager
def unquantized(model: nn.Module, *, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """The model with every original layer back for the block; the plan applied
    before is applied again afterwards (from the same layer cache)."""
    before = dict(getattr(model, APPLIED, {}))
    quantize_(model, {n: None for n in units_of(model)}, device=device, dtype=dtype)
    try:
        yield
    finally:
        quantize_(model, before, device=device, dtype=dtype)
