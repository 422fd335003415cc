"""`quantize_(model, plan)`: swap planned `nn.Linear`s for `HQQLinear`, by full name.

Works on any `nn.Module` (transformers LMs, timm ViTs). The first call remembers
each linear layer's original module, so calling it again with another plan
re-assigns layers in place (that is how a search moves between trials) and a
`None` restores the original. Quantized layers come from a `LayerCache`: within
a process a (layer, nbits, group_size) pair is quantized at most once; with a
folder, results are also reused across runs, keyed by a hash of the weights,
the config and the hqq/torch versions so a stale entry can never match.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from .io import write_atomic
from .plan import LayerConfig

ORIGINALS = "_autoq_originals"   # module name -> the original layer (set on the model)
APPLIED = "_autoq_applied"       # the resolved plan applied last


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Full module name -> (in_features, out_features) of every quantizable linear,
    including ones already swapped for HQQLinear."""
    originals = getattr(model, ORIGINALS, {})
    out = {}
    for name, module in model.named_modules():
        base = originals.get(name, module)
        if is_linear(base):
            out[name] = (base.in_features, base.out_features)
    return out


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def hqq_config(cfg: LayerConfig, optimize: bool = True) -> dict:
    """The quant-config dict HQQLinear expects (axis=1, as gemlite serves); without
    `optimize`, the same packing without HQQ's solver (fast; for timing layers)."""
    from hqq.core.quantize import BaseQuantizeConfig

    quant = BaseQuantizeConfig(nbits=cfg.nbits, group_size=cfg.group_size, axis=1)
    quant["weight_quant_params"]["optimize"] = optimize
    return quant


def quantize_linear(linear: nn.Linear, cfg: LayerConfig, device: torch.device,
                    dtype: torch.dtype, optimize: bool = True) -> nn.Module:
    """One HQQLinear from `linear` (left intact), quantized on `device`.

    Scales and zeros are stored in 16 bits (the compute dtype on GPU, fp16 on a
    CPU computing in fp32), so a layer costs nbits + 32/group_size bits per weight.
    """
    from hqq.core.quantize import HQQLinear

    layer = HQQLinear.from_weights(linear.weight.data, linear.bias, hqq_config(cfg, optimize),
                                   compute_dtype=dtype, device=str(device), del_orig=True)
    return meta_16bit(layer)


def meta_16bit(layer: nn.Module) -> nn.Module:
    """Keep an HQQLinear's scale and zero in 16 bits (the compute dtype if that is
    fp16/bf16, else fp16). HQQ widens them to the compute dtype whenever it moves or
    loads a layer, so every quantized or loaded layer goes through here."""
    dtype = layer.compute_dtype
    meta_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
    for key in ("scale", "zero"):
        layer.meta[key] = layer.meta[key].to(meta_dtype)
    return layer


class Dequantized(nn.Module):
    """An HQQLinear scored from its weight dequantized once: the same arithmetic as
    HQQ's torch forward (x @ dequantize().T, then + bias) without unpacking the bits
    on every call. For scoring many windows / trials on CPU only; size, speed and
    saving always use the HQQLinear itself (`.hqq`)."""

    def __init__(self, hqq: nn.Module):
        super().__init__()
        object.__setattr__(self, "hqq", hqq)  # not a submodule: counted / saved once
        self.register_buffer("weight", hqq.dequantize(), persistent=False)
        self.bias = hqq.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x, self.weight.t())
        return out + self.bias if self.bias is not None else out


class LayerCache:
    """(layer, nbits, group_size) -> quantized module; optional on-disk layer."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder else None
        self.memory: dict[tuple, nn.Module] = {}
        self.quantized: list[tuple[str, LayerConfig]] = []  # what was really computed
        self.disk_hits = 0
        self._weight_hash: dict[int, str] = {}
        self._dequantized: dict[int, Dequantized] = {}

    def dequantized(self, layer: nn.Module) -> Dequantized:
        """The scoring twin of a cached HQQLinear (made once per layer object)."""
        if id(layer) not in self._dequantized:
            self._dequantized[id(layer)] = Dequantized(layer)
        return self._dequantized[id(layer)]

    def get(self, name: str, linear: nn.Linear, cfg: LayerConfig, device: torch.device,
            dtype: torch.dtype) -> nn.Module:
        key = (name, cfg, str(device), dtype)
        if key not in self.memory:
            self.memory[key] = self._load(name, linear, cfg, device, dtype) \
                or self._compute(name, linear, cfg, device, dtype)
        return self.memory[key]

    def _compute(self, name, linear, cfg, device, dtype) -> nn.Module:
        layer = quantize_linear(linear, cfg, device, dtype)
        self.quantized.append((name, cfg))
        if self.folder is not None:
            import io
            buf = io.BytesIO()
            layer.encoded_state_dict = False
            torch.save({k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                        for k, v in layer.state_dict().items()}, buf)
            write_atomic(self._path(linear, cfg, device, dtype), buf.getvalue(), sync=False)
        return layer

    def _load(self, name, linear, cfg, device, dtype) -> nn.Module | None:
        if self.folder is None:
            return None
        path = self._path(linear, cfg, device, dtype)
        if not path.exists():
            return None
        from hqq.core.quantize import HQQLinear

        try:
            state = torch.load(path, map_location=device, weights_only=True)
            layer = HQQLinear(None, None, compute_dtype=dtype, device=str(device))
            layer.load_state_dict(state)
            meta_16bit(layer)
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None
        self.disk_hits += 1
        return layer

    def _path(self, linear, cfg, device, dtype) -> Path:
        ident = id(linear.weight)
        if ident not in self._weight_hash:
            h = hashlib.sha256()
            for t in (linear.weight, linear.bias):
                if t is not None:
                    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._weight_hash[ident] = h.hexdigest()
        key = "|".join([self._weight_hash[ident], cfg.label, "axis1", str(dtype), device.type,
                        "hqq", version("hqq"), "torch", torch.__version__.split("+")[0],
                        "meta16"])
        return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".pt")


def quantize_(model: nn.Module, resolved: Mapping[str, LayerConfig | None], *,
              device: torch.device, dtype: torch.dtype, cache: LayerCache | None = None,
              progress: Callable[[str], None] | None = None) -> nn.Module:
    """Apply a resolved plan (module name -> config or None) to `model` in place."""
    cache = cache if cache is not None else LayerCache()
    originals: dict[str, nn.Linear] = getattr(model, ORIGINALS, None) or {}
    if not originals:
        originals = {n: m for n, m in model.named_modules() if is_linear(m)}
        object.__setattr__(model, ORIGINALS, originals)  # not a submodule
    for name, cfg in resolved.items():
        base = originals[name]
        module = base if cfg is None else cache.get(name, base, cfg, device, dtype)
        set_module(model, name, module)
        if progress:
            progress(name)
    applied = {**getattr(model, APPLIED, {}), **resolved}
    object.__setattr__(model, APPLIED, applied)
    object.__setattr__(model, "_autoq_cache", cache)
    return model


@contextmanager
def unquantized(model: nn.Module, *, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """The model with every original layer back for the block; the plan applied
    before is applied again afterwards (from the same layer cache)."""
    before = dict(getattr(model, APPLIED, {}))
    cache = getattr(model, "_autoq_cache", None)
    quantize_(model, {n: None for n in linear_shapes(model)}, device=device, dtype=dtype,
              cache=cache)
    try:
        yield
    finally:
        quantize_(model, before, device=device, dtype=dtype, cache=cache)
