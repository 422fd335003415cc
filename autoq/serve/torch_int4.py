"""`torch-int4`: torch's own int4 CPU kernels, fed a method's affine form (autoq.quant.Affine).

torch's kernel (`aten._weight_int4pack_mm_for_cpu`) computes, per group of `kgroup` along
in_features, w = (q - 8) * scale + zero; HQQ (axis=1) computes w = (q - z) * s. So
scale = s and zero = (8 - z) * s serve a 4-bit layer exactly. 3-, 2- and 1-bit codes fit
in 4 bits too: they are shifted per group towards the middle of 0..15,
q' = q + c with c = clamp(round(8 - z), 0, 16 - 2**nbits) and zero = (8 - c - z) * s, the
same w in exact arithmetic, so that (q' - 8) * scale and zero do not cancel in bf16 (1-bit
layers had 5-20% error without it). Kernel limits (torch 2.14, from the ops' errors):
out_features % 16 == 0, kgroup in {32, 64, 128, 256} dividing the method's group, and
in_features % group == 0.

- <= 4 bits: `Int4Linear`, one kernel call.
- 5-8 bits: `Int8SplitLinear`: codes q = 16 hi + lo as one int4 matrix [hi | lo] against
  [x, x]: hi with scale 16 s and zero (136 - z) s, lo with scale s and zero 0; the sum is
  (q - z) s exactly. Measured faster than the matrix dequantized once (and 3.6x smaller),
  and aten._weight_int8pack_mm has one scale per row and no zero point (exact only for
  whole-row groups).
- anything else (groups below 32, out_features not a multiple of 16): `Dequantized`, the
  matrix dequantized once at load, held in the compute dtype (memory reported as it is).

Activations and scales are bf16 (the kernel's fast path; fp32 works but is 15-30x
slower): outputs are within bf16 rounding of the method's dequantized matmul. Embeddings
keep their gather of packed rows; experts their per-expert dequantize.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..quant import LayerConfig, method_of
from .backend import Backend

KERNEL_GROUPS = (256, 128, 64, 32)   # the kernel's qGroupSize values, largest first
N_MULTIPLE = 16                      # out_features must be a multiple of this
COMPUTE = torch.bfloat16


def kernel_group(group: int) -> int | None:
    """The kernel group that serves the method's groups of `group` exactly."""
    return next((g for g in KERNEL_GROUPS if group % g == 0), None)


def how(cfg: LayerConfig, in_features: int, out_features: int) -> tuple[str, str]:
    """(which module serves an (out, in) layer of `cfg`, why that one)."""
    group = cfg.group_size or in_features
    if in_features % group or kernel_group(group) is None:
        return "dequantized", f"group {group}: the int4 kernel takes groups of 32/64/128/256"
    if out_features % N_MULTIPLE:
        return "dequantized", f"out_features {out_features} is not a multiple of {N_MULTIPLE}"
    if cfg.nbits <= 4:
        return "int4", f"{cfg.nbits:g}-bit codes in the int4 kernel"
    return "int8-split", f"{cfg.nbits:g}-bit codes as two int4 halves in one kernel call"


def _layout(scale: torch.Tensor, zero_term: torch.Tensor, group: int, kgroup: int) -> torch.Tensor:
    """The kernel's (in / kgroup, out, 2) scales and zeros from per-(row, group) ones."""
    sz = torch.stack([scale, zero_term], dim=-1).repeat_interleave(group // kgroup, dim=1)
    return sz.transpose(0, 1).contiguous().to(COMPUTE)


class Int4Linear(nn.Module):
    """x @ W.T (+ bias) with W packed for torch's int4 CPU kernel; x of any float dtype."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, kgroup: int,
                 in_features: int, out_features: int, bias: torch.Tensor | None,
                 inputs: int = 1):
        super().__init__()
        self.in_features, self.out_features, self.kgroup = in_features, out_features, kgroup
        self.inputs = inputs   # 2 for Int8SplitLinear: the kernel sees [x, x]
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().to(COMPUTE))

    @classmethod
    def from_affine(cls, a, bias, in_features: int, out_features: int) -> "Int4Linear":
        s, z = a.scale.double(), a.zero.double()
        kgroup = kernel_group(a.group)
        if a.nbits <= 4:
            shift = (8 - z).round().clamp(0, 16 - 2 ** math.ceil(a.nbits))
            codes = a.codes.to(torch.int32) + shift.to(torch.int32).repeat_interleave(a.group, 1)
            sz, inputs = _layout(s, (8 - shift - z) * s, a.group, kgroup), 1
        else:   # q = 16 hi + lo: hi (scale 16 s, zero (136 - z) s) + lo (scale s, zero 0)
            c = a.codes.to(torch.int32)
            codes = torch.cat([c >> 4, c & 15], dim=1)
            sz = torch.cat([_layout(16 * s, (136 - z) * s, a.group, kgroup),
                            _layout(s, torch.zeros_like(s), a.group, kgroup)])
            inputs = 2
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        return cls(packed, sz.contiguous(), kgroup, in_features, out_features, bias, inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(COMPUTE).contiguous()
        if self.inputs == 2:
            x2 = torch.cat([x2, x2], dim=1)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.kgroup,
                                                       self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        """The (out, in) matrix as served (for model code that reads `.weight`)."""
        eye = torch.eye(self.in_features, dtype=COMPUTE)
        bias, self.bias = self.bias, None
        try:
            return self.forward(eye).t().contiguous()
        finally:
            self.bias = bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"kgroup={self.kgroup}, {'8-bit split' if self.inputs == 2 else 'int4'}")


class Dequantized(nn.Module):
    """The packed matrix dequantized once at load, held in the compute dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight.detach().to(dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return nn.functional.linear(x.to(w.dtype), w, self.bias).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        return self.weight


def convert(layer: nn.Module) -> nn.Module:
    """The CPU serving module of one packed layer (the method's affine form)."""
    method = method_of(layer)
    cfg = method.config_of(layer)
    kind, _ = how(cfg, layer.in_features, layer.out_features)
    if kind == "dequantized":
        dtype = layer.compute_dtype if layer.compute_dtype != torch.float16 else torch.float32
        return Dequantized(method.dequantize(layer), layer.bias, dtype)
    return Int4Linear.from_affine(method.affine(layer), layer.bias, layer.in_features,
                                  layer.out_features)


BACKEND = Backend("torch-int4", "torch's int4 CPU kernels (<= 4-bit; 8-bit as two halves)",
                  ("cpu",), "affine", lambda cfg, fin, fout: cfg.problem(fin, fout), convert,
                  how=how, computes_in="bfloat16")
