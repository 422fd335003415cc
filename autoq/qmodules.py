"""The quantized modules autoq puts into a model. Each wraps HQQ's packed format
(an HQQLinear: W_q plus a 16-bit scale and zero per group) and keeps the model's
own forward working:

- QuantLinear / QuantConv1D: HQQLinear with a `weight` that model code may read
  directly (timm BEiT/EVA pass `self.qkv.weight` to F.linear);
- a quantized lookup (`lookup`): the embedding module's own class with its table
  packed; a lookup dequantizes only the rows it gathers;
- ExpertWeights: a 3-D expert parameter whose experts are quantized one by one;
  indexing one expert dequantizes only that expert.

Where model code reads a whole weight, `Dequantizes` answers shape, dtype and
device without dequantizing, and dequantizes on any other use.
"""

from __future__ import annotations

from typing import Callable

import torch
from hqq.core.quantize import HQQLinear
from torch import nn

_PACK = {"8bit_u8": (1, 8), "4bit_u8": (2, 4), "2bit_u8": (4, 2), "1bit_u8": (8, 1),
         "3bit_32": (10, 3)}  # HQQ packing -> (values per packed element, bits per value)


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


class QuantLinear(HQQLinear):
    """HQQLinear (dequantize + matmul) with a readable `weight` (out, in)."""

    @property
    def weight(self) -> Dequantizes:
        fout, fin = self.meta["shape"]
        return Dequantizes(self.dequantize, (fout, fin), self.compute_dtype, self.W_q.device)


class QuantConv1D(QuantLinear):
    """A transformers Conv1D (y = x @ W + b, W stored (in, out)) as an HQQLinear of W.T;
    its `weight` reads back in the Conv1D orientation."""

    @property
    def weight(self) -> Dequantizes:
        fout, fin = self.meta["shape"]
        return Dequantizes(lambda: self.dequantize().t(), (fin, fout), self.compute_dtype,
                           self.W_q.device)


# ---- embeddings ------------------------------------------------------------------------
def gather_rows(layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of the (rows, cols) matrix an HQQLinear holds, dequantized: the same
    arithmetic as HQQ's full dequantize, on the gathered groups only. HQQ packs the
    (groups, group_size) matrix by stacking `per` slices of `step` groups into one
    element, so group g sits in packed row g % step at slot g // step."""
    meta = layer.meta
    rows, cols = meta["shape"]
    gs = meta["group_size"]
    per_row = cols // gs
    groups = (ids.reshape(-1, 1) * per_row + torch.arange(per_row, device=ids.device)).reshape(-1)
    packing = meta["packing"]
    w_q = layer.W_q
    if packing is None:
        q = w_q[groups]
    else:
        per, bits = _PACK[packing]
        if meta.get("view_as_float"):
            w_q = w_q.view(meta["unpack_view_dtype"])
        step = w_q.shape[0]
        shift = (bits * (per - 1 - groups // step)).to(w_q.dtype).unsqueeze(1)
        q = (w_q[groups % step] >> shift) & ((1 << bits) - 1)
    q = q.to(meta.get("compute_dtype", torch.float16))  # as HQQ's Quantizer.dequantize
    out = (q - meta["zero"][groups]) * meta["scale"][groups]
    return out.reshape(*ids.shape, cols)


class QuantizedLookup(nn.Embedding):
    """An embedding whose (vocab, hidden) table is kept packed (`self.table`, an
    HQQLinear, shared with a tied head); a lookup dequantizes only the rows it
    gathers. Made by `lookup`, as a subclass of the original module's class."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        table = self.table
        if isinstance(getattr(table, "weight", None), torch.Tensor):  # a dequantized twin
            return nn.functional.embedding(input, table.weight, self.padding_idx)
        return gather_rows(table, input)

    @property
    def weight(self) -> Dequantizes:
        return Dequantizes(self.table.dequantize, (self.num_embeddings, self.embedding_dim),
                           _dtype_of(self.table), self.table.W_q.device
                           if hasattr(self.table, "W_q") else self.table.weight.device)


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
