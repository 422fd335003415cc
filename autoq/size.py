"""Exact model size: the bytes of every tensor the quantized model keeps.

Quantized layers count their packed weight, scale and zero (and bias); every
other parameter and buffer counts as stored; tied weights count once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

MIB = 2**20


@dataclass(frozen=True)
class Size:
    size_mib: float            # whole model
    bits_per_weight: float     # over the quantized layers: weight + scale + zero
    model_bits_per_weight: float  # whole model bytes * 8 / all weights
    quantized_params: int      # weights in quantized layers
    total_params: int          # all weights (quantized layers' weights + other parameters)
    size_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def _hqq_tensors(layer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(weight-side tensors: W_q, scale, zero), (bias)."""
    meta = layer.meta
    core = [layer.W_q] + [meta[k] for k in ("scale", "zero", "zero_scale", "scale_q", "zero_q")
                          if isinstance(meta.get(k), torch.Tensor)]
    extra = [layer.bias] if isinstance(layer.bias, torch.Tensor) else []
    return core, extra


def measure(model: nn.Module) -> Size:
    from hqq.core.quantize import HQQLinear

    seen: set[tuple] = set()

    def nbytes(t: torch.Tensor) -> int:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.dtype, t.device)
        if key in seen:
            return 0
        seen.add(key)
        return t.numel() * t.element_size()

    total = qbytes = qparams = fparams = 0
    for module in model.modules():
        if isinstance(module, HQQLinear):
            core, extra = _hqq_tensors(module)
            b = sum(nbytes(t) for t in core)
            qbytes += b
            total += b + sum(nbytes(t) for t in extra)
            qparams += module.in_features * module.out_features
            continue
        for p in module.parameters(recurse=False):
            n = nbytes(p)
            total += n
            fparams += p.numel() if n else 0
        for b in module.buffers(recurse=False):
            total += nbytes(b)
    allp = qparams + fparams
    return Size(size_mib=total / MIB,
                bits_per_weight=(qbytes * 8 / qparams) if qparams else _fp_bits(model),
                model_bits_per_weight=total * 8 / max(allp, 1),
                quantized_params=qparams, total_params=allp, size_bytes=total)


def _fp_bits(model: nn.Module) -> float:
    """Nothing quantized: the bits of the linear weights as stored."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return m.weight.element_size() * 8.0
    return 0.0


def saved_tensor_bytes(obj) -> int:
    """Bytes of all distinct tensors in a (nested) saved object, e.g. HQQ's qmodel.pt."""
    seen, total = set(), 0
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            key = (x.untyped_storage().data_ptr(), x.storage_offset(), x.shape, x.dtype)
            if key not in seen:
                seen.add(key)
                total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total
