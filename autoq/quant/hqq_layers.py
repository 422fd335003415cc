"""HQQ's packed layer as autoq installs it: hqq's HQQLinear (W_q plus a 16-bit scale and
zero per group), with a `weight` that model code may read directly (timm BEiT/EVA pass
`self.qkv.weight` to F.linear). Used only through autoq.quant.hqq's method object.
"""

from __future__ import annotations

from typing import Mapping

import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear, Quantizer
from torch import nn

from . import Affine, LayerConfig
from .modules import Dequantizes

_PACK = {"8bit_u8": (1, 8), "4bit_u8": (2, 4), "2bit_u8": (4, 2), "1bit_u8": (8, 1),
         "3bit_32": (10, 3)}  # HQQ packing -> (values per packed element, bits per value)


class QuantLinear(HQQLinear):
    """HQQLinear (dequantize + matmul) with a readable `weight` (out, in)."""

    quant_method = "hqq"

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


def hqq_config(cfg: LayerConfig, optimize: bool = True) -> dict:
    """The quant-config dict HQQLinear expects (axis=1, as gemlite serves)."""
    quant = BaseQuantizeConfig(nbits=cfg.nbits, group_size=cfg.group_size, axis=1)
    quant["weight_quant_params"]["optimize"] = optimize
    return quant


def meta_16bit(layer: nn.Module) -> nn.Module:
    """Keep an HQQ layer's scale and zero in 16 bits (the compute dtype if that is
    fp16/bf16, else fp16). HQQ widens them to the compute dtype whenever it moves or
    loads a layer, so every quantized or loaded layer goes through here."""
    dtype = layer.compute_dtype
    meta_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
    for key in ("scale", "zero"):
        layer.meta[key] = layer.meta[key].to(meta_dtype)
    return layer


def quantize(weight: torch.Tensor, bias: torch.Tensor | None, cfg: LayerConfig,
             device: torch.device, dtype: torch.dtype, transposed: bool = False,
             optimize: bool = True) -> nn.Module:
    """One HQQ layer of an (out, in) matrix, quantized on `device`. Scales and zeros are
    stored in 16 bits (the compute dtype on GPU, fp16 on a CPU computing in fp32), so a
    layer costs nbits + 32/group_size bits per weight."""
    cls = QuantConv1D if transposed else QuantLinear
    layer = cls.from_weights(weight.contiguous(), bias, hqq_config(cfg, optimize),
                             compute_dtype=dtype, device=str(device), del_orig=True)
    return meta_16bit(layer)


def load(state: Mapping, transposed: bool, device: torch.device, dtype: torch.dtype) -> nn.Module:
    layer = (QuantConv1D if transposed else QuantLinear)(None, None, compute_dtype=dtype,
                                                         device=str(device))
    layer.load_state_dict(dict(state))
    return meta_16bit(layer)


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


def affine(layer: nn.Module):
    """(codes (out, in) uint8, scale and zero (out, in / group) fp32) of a layer quantized
    along axis 1 (autoq.quant.Affine)."""
    meta = layer.meta
    out, fin = meta["shape"]
    group = meta["group_size"]
    w_q = layer.W_q.view(meta["unpack_view_dtype"]) if meta.get("view_as_float") else layer.W_q
    codes = Quantizer.unpack[meta["packing"]](w_q, dtype=torch.uint8) if meta["packing"] else w_q
    codes = codes[:out * fin // group].reshape(out, fin).to(torch.uint8)
    return Affine(codes, meta["scale"].float().reshape(out, -1),
                  meta["zero"].float().reshape(out, -1), group, meta["nbits"])
