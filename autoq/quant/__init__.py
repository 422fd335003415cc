"""Quantization methods, behind one seam.

A method (one registered class, `METHODS`) owns everything about its numbers: which
configs are valid for a layer (`problem`), the exact stored bits (`bits_per_weight`,
`tensors`), quantize (a weight -> a packed layer), dequantize, the saved form
(`state` / `load`) and the forms its packed tensors take, which says which serving
kernels can take them (autoq.serve). `hqq` is the one registered today; nothing
outside autoq/quant/ imports hqq.

A `LayerConfig` names its method; plans carry the method (and its version) per
layer or by default (autoq.plan). The rest of the package is method-agnostic:
layers.py finds the quantizable matrices of any model, modules.py keeps the model's
own forward working around a packed matrix, cache.py quantizes each (matrix, config)
once, model.py is the quantized-model object, size.py the exact size.

A method's packed layer is an nn.Module computing x @ W.T (+ bias) with
`quant_method` (its method's name), `in_features`, `out_features`, `bias`,
`compute_dtype` and `dequantize()` (the (out, in) matrix).

Importing this package imports no torch: the CLI validates configs by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UserError
from ..registry import Registry

METHODS = Registry("quantization method", {"hqq": "autoq.quant.hqq:METHOD"})
DEFAULT_METHOD = "hqq"
FP = "fp"   # the label of "not quantized" (None in code, null in JSON)


@dataclass(frozen=True, order=True)
class LayerConfig:
    """One setting of a method: `nbits` bits per weight, one scale/zero per `group_size`
    weights along in_features (None: one group per row)."""

    nbits: float
    group_size: int | None
    method: str = DEFAULT_METHOD

    def to_json(self, with_method: bool = False) -> dict:
        out = {"method": self.method} if with_method else {}
        return {**out, "nbits": self.nbits, "group_size": self.group_size}

    @classmethod
    def from_json(cls, obj: Mapping | None, method: str = DEFAULT_METHOD) -> "LayerConfig | None":
        """From a trusted {"nbits", "group_size"[, "method"]} object (None: not quantized);
        integral bit widths become ints (4.0 -> 4)."""
        if obj is None:
            return None
        nbits = obj["nbits"]
        return cls(int(nbits) if float(nbits).is_integer() else nbits, obj["group_size"],
                   obj.get("method", method))

    @property
    def label(self) -> str:
        """`4:64`, `4:row` (whole rows); another method than the default is named first:
        `name/4:64`."""
        core = f"{self.nbits:g}:{self.group_size or 'row'}"
        return core if self.method == DEFAULT_METHOD else f"{self.method}/{core}"

    @property
    def quant(self):
        """The method object (autoq.quant.<method>)."""
        return METHODS.get(self.method)

    def bits_per_weight(self, in_features: int) -> float:
        """Exact stored bits per weight: packed values + scale/zero metadata."""
        return self.quant.bits_per_weight(self, in_features)

    def stored_bits(self, in_features: int, out_features: int) -> int:
        """Exactly the bits an (out, in) matrix stores under this config (sizes are
        additive over matrices: the knapsack's budget arithmetic)."""
        return self.quant.stored_bits(self, in_features, out_features)

    def problem(self, in_features: int, out_features: int) -> str | None:
        """Why this config cannot quantize an (out, in) weight, or None if it can."""
        return self.quant.problem(self, in_features, out_features)

    @staticmethod
    def parse(text: str, flag: str = "--uniform") -> "LayerConfig":
        """`4:64` -> LayerConfig(4, 64); `4:row` or `4:none`: whole-row groups;
        `method/4:64` for another method than the default."""
        method, _, core = text.rpartition("/")
        method = method or DEFAULT_METHOD
        METHODS.check(method, f"{flag} {text!r}: method")
        try:
            nb, gs = core.split(":")
            nbits = float(nb)
            nbits = int(nbits) if nbits.is_integer() else nbits
            group = None if gs.lower() in ("row", "none", "null") else int(gs)
        except ValueError:
            raise UserError(f"{flag} {text!r} is not NBITS:GROUP_SIZE; write for example 4:64.")
        bits = METHODS.get(method).NBITS
        if nbits not in bits:
            raise UserError(f"{flag} {text!r}: nbits must be one of {list(bits)}.")
        return LayerConfig(nbits, group, method)


@dataclass(frozen=True)
class Affine:
    """A packed matrix in the form integer kernels take (a method that can give it lists
    "affine" in its `forms`): codes and a scale and zero per group along in_features,
        w[o, i] = (codes[o, i] - zero[o, i // group]) * scale[o, i // group]."""
    codes: Any        # (out, in) uint8 tensor
    scale: Any        # (out, in / group) float tensor
    zero: Any         # (out, in / group) float tensor
    group: int
    nbits: float


def label_of(cfg: LayerConfig | None) -> str:
    """`4:64`, `4:row`, or `fp` for a layer kept in full precision."""
    return FP if cfg is None else cfg.label


def method_of(layer) -> object:
    """The method object that made a packed layer."""
    return METHODS.get(layer.quant_method)
