"""Exact model size: the bytes of every tensor the quantized model keeps.

Quantized layers (linears, Conv1D, embedding tables, experts) count the tensors their
method stores (`tensors`: packed values, scales, zeros); every other tensor counts
once (a tied embedding and head share one). Two sizes, clearly apart:

- `size_mib`: unquantized float tensors counted in 16 bits (fp16/bf16), what the
  model weighs served on a GPU and what `autoq apply` saves, whatever dtype this run
  computes in;
- `memory_mib`: every distinct tensor the model holds now, as held (fp32 on a CPU
  computing in fp32; a serving backend's repacked copies too: `resident_bytes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

MIB = 2**20
STORED_FLOAT_BYTES = 2     # unquantized float tensors are stored in 16 bits


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """How unquantized floats are stored: bf16 when computing in bf16, else fp16."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float16


@dataclass(frozen=True)
class Size:
    size_mib: float               # whole model, unquantized floats at 16 bits
    bits_per_weight: float        # over the quantized layers: weight + scale + zero
    model_bits_per_weight: float  # whole model (16-bit storage) * 8 / all weights
    quantized_params: int         # weights in quantized layers
    total_params: int             # all weights
    size_bytes: int
    memory_mib: float             # as held in memory now

    def to_json(self) -> dict:
        return asdict(self)


def stored_bytes(t: torch.Tensor) -> int:
    """A tensor's bytes as autoq stores it: floats wider than 16 bits count 16."""
    per = min(t.element_size(), STORED_FLOAT_BYTES) if t.is_floating_point() else \
        t.element_size()
    return t.numel() * per


class _Counter:
    """Counts each distinct tensor once (by storage, offset, shape and dtype)."""

    def __init__(self):
        self.seen: set[tuple] = set()
        self.stored = self.memory = 0

    def add(self, t: torch.Tensor | None) -> int:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return 0
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.dtype, t.device)
        if key in self.seen:
            return 0
        self.seen.add(key)
        self.memory += t.numel() * t.element_size()
        self.stored += stored_bytes(t)
        return stored_bytes(t)


def measure(qm) -> Size:
    """The exact size of a quantized model (autoq.quant.model.QuantizedModel)."""
    from . import method_of

    model, units, layers = qm.model, qm.units, qm.installed
    count = _Counter()
    qbytes = qparams = 0
    seen_layers: set[int] = set()
    for name, layer in layers.items():
        if id(layer) in seen_layers:
            continue  # a tied embedding and head: one tensor
        seen_layers.add(id(layer))
        qbytes += sum(count.add(t) for t in method_of(layer).tensors(layer))
        count.add(layer.bias)
        qparams += units[name].weights
    fparams = 0
    served = {id(m) for s in model.modules() if getattr(s, "served", False) for m in s.modules()}
    for module in model.modules():
        if id(module) in seen_layers or id(module) in served:
            continue
        for p in module.parameters(recurse=False):
            fparams += p.numel() if count.add(p) else 0
        for bname, b in module.named_buffers(recurse=False):
            if bname not in module._non_persistent_buffers_set:
                count.add(b)
    for fp in _fp_experts(model):
        fparams += fp.numel() if count.add(fp) else 0
    allp = qparams + fparams
    bits = (qbytes * 8 / qparams) if qparams else 8.0 * STORED_FLOAT_BYTES
    return Size(size_mib=count.stored / MIB, bits_per_weight=bits,
                model_bits_per_weight=count.stored * 8 / max(allp, 1),
                quantized_params=qparams, total_params=allp, size_bytes=count.stored,
                memory_mib=resident_bytes(qm) / MIB)


def resident_bytes(qm) -> int:
    """Bytes of every distinct tensor the model holds now: parameters and persistent
    buffers of its module tree (a serving backend's kernels' tensors included), the
    packed layers it runs (not those a backend converted: their packed copy is kept for
    the layer cache and `.weight` reads only, and a served model drops it) and the
    unquantized experts."""
    from . import method_of

    modules = dict(qm.model.named_modules())
    count = _Counter()
    for module in qm.model.modules():
        for t in module.parameters(recurse=False):
            count.add(t)
        for name, t in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                count.add(t)
    for name, layer in qm.installed.items():
        if getattr(modules.get(name), "served", False):
            continue
        for t in [*method_of(layer).tensors(layer), layer.bias]:
            count.add(t)
    for fp in _fp_experts(qm.model):
        count.add(fp)
    return count.memory


def _fp_experts(model: nn.Module):
    """The unquantized experts of partly quantized expert parameters."""
    from .modules import ExpertWeights

    for module in model.modules():
        for value in module.__dict__.values():
            if isinstance(value, ExpertWeights):
                yield from (value.fp[e] for e, layer in enumerate(value.layers) if layer is None)


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
