"""What keeps a model's own forward working around a packed matrix, for any method
(the packed layer itself, a method's nn.Module, serves linears; see autoq.quant.hqq):

- a quantized lookup (`lookup`): the embedding module's own class with its table
  packed; a lookup dequantizes only the rows it gathers;
- ExpertWeights: a 3-D expert parameter whose experts are quantized one by one;
  indexing one expert dequantizes only that expert;
- Dequantized: a packed layer's scoring twin, its matrix dequantized once.

Where model code reads a whole weight, `Dequantizes` answers shape, dtype and
device without dequantizing, and dequantizes on any other use.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import method_of



class TensorLike:
    """Answers shape, dtype and device itself; any other use (a torch function, a tensor
    method, indexing) runs on `materialize()`, the real tensor."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    def materialize(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def real(x):
            return x.materialize() if isinstance(x, TensorLike) else x
        return func(*[real(a) for a in args], **{k: real(v) for k, v in (kwargs or {}).items()})

    def __getitem__(self, index):
        return self.materialize()[index]

    def __getattr__(self, name):  # t(), transpose(), float(), ...: on the real tensor
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)


class Dequantizes(TensorLike):
    """Stands for a quantized matrix where model code reads the weight itself."""

    def __init__(self, fn: Callable[[], torch.Tensor], shape, dtype, device):
        self._fn, self.shape, self.dtype, self.device = fn, torch.Size(shape), dtype, device

    def materialize(self) -> torch.Tensor:
        return self._fn()


def _dtype_of(layer) -> torch.dtype:
    return getattr(layer, "compute_dtype", None) or layer.weight.dtype


def _device_of(layer) -> torch.device:
    """A packed layer's device (or its dequantized twin's)."""
    if isinstance(getattr(layer, "weight", None), torch.Tensor):
        return layer.weight.device
    return method_of(layer).tensors(layer)[0].device


class QuantizedLookup(nn.Embedding):
    """An embedding whose (vocab, hidden) table is kept packed (`self.table`, a
    packed layer, shared with a tied head); a lookup dequantizes only the rows it
    gathers. Made by `lookup`, as a subclass of the original module's class."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        table = self.table
        if isinstance(getattr(table, "weight", None), torch.Tensor):  # a dequantized twin
            return nn.functional.embedding(input, table.weight, self.padding_idx)
        return method_of(table).gather(table, input)

    @property
    def weight(self) -> Dequantizes:
        return Dequantizes(self.table.dequantize, (self.num_embeddings, self.embedding_dim),
                           _dtype_of(self.table), _device_of(self.table))


_LOOKUP_CLASSES: dict[type, type] = {}


def lookup(original: nn.Embedding, table: nn.Module) -> nn.Embedding:
    """`original` (left intact) as a quantized lookup of `table`: an instance of its own
    class (so its forward, e.g. a position offset or a scale, still runs) whose table
    is packed."""
    cls = type(original)
    if cls not in _LOOKUP_CLASSES:
        _LOOKUP_CLASSES[cls] = QuantizedLookup if cls is nn.Embedding else \
            type(f"Quantized{cls.__name__}", (cls, QuantizedLookup), {})
    new = object.__new__(_LOOKUP_CLASSES[cls])
    new.__dict__.update(original.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = dict(original.__dict__[key])
    del new._parameters["weight"]
    object.__setattr__(new, "table", table)  # not a submodule: counted and saved once
    return new


# ---- experts ----------------------------------------------------------------------------
class ExpertWeights(TensorLike):
    """A 3-D expert parameter (experts, out, in) or, `transposed`, (experts, in, out),
    some of whose experts are quantized. `weights[e]` is expert e's matrix as stored
    (only that expert is dequantized); any other use sees the whole tensor."""

    def __init__(self, original: nn.Parameter, transposed: bool):
        self.original, self.transposed = original, transposed
        self.layers: list[nn.Module | None] = [None] * original.shape[0]
        self.fp: list[torch.Tensor] = [original[e] for e in range(original.shape[0])]  # views
        self.shape, self.dtype, self.device = original.shape, original.dtype, original.device

    def set(self, index: int, layer: nn.Module | None) -> None:
        self.layers[index] = layer
        if layer is not None:
            self.dtype = _dtype_of(layer)

    def all_fp(self) -> bool:
        return all(layer is None for layer in self.layers)

    def expert(self, e: int) -> torch.Tensor:
        layer = self.layers[e]
        if layer is None:
            return self.fp[e].to(self.dtype)
        w = layer.weight if isinstance(getattr(layer, "weight", None), torch.Tensor) else \
            layer.dequantize()
        return w.t() if self.transposed else w

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor) and index.dim() == 1:
            return torch.stack([self.expert(int(e)) for e in index])
        if isinstance(index, (int, torch.Tensor)):
            return self.expert(int(index))
        return self.materialize()[index]

    def materialize(self) -> torch.Tensor:
        return torch.stack([self.expert(e) for e in range(len(self.layers))])


# ---- scoring ----------------------------------------------------------------------------
class Dequantized(nn.Module):
    """A packed layer scored from its matrix dequantized once: the same arithmetic as
    the packed forward (x @ dequantize().T, then + bias) without unpacking the bits
    on every call. For scoring many windows / trials on CPU only; size, speed and
    saving always use the packed layer itself (`.packed`)."""

    def __init__(self, packed: nn.Module):
        super().__init__()
        object.__setattr__(self, "packed", packed)  # not a submodule: counted / saved once
        self.register_buffer("weight", method_of(packed).dequantize(packed), persistent=False)
        self.bias = packed.bias

    def dequantize(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x, self.weight.t())
        return out + self.bias if self.bias is not None else out
