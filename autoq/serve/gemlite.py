"""`gemlite`: gemlite's Triton kernels (CUDA only), fed HQQ's packed layers.

It serves a layer only when `problem` finds nothing wrong: 1/2/4/8-bit, group_size
>= 32 (>= 64 at 1 bit) dividing in_features (a null group means one group of
in_features), in_features % 32 == 0, and axis=1 (what autoq always quantizes with).
gemlite itself takes groups of 16, but its kernels, run in the Triton interpreter
(tests/test_gemlite_interpreter.py), give wrong values there at batch >= 5 (its GEMM
tiles are at least 32 wide and read one scale per tile), and 1-bit groups below 64 (2-bit
groups of 16) leave its batch-1 kernel no valid config. gemlite is
imported only when a layer is converted: `import gemlite` fails on a machine
without a GPU.
"""

from __future__ import annotations

from ..quant import LayerConfig
from .backend import Backend

BITS = (1, 2, 4, 8)
MIN_GROUP = {1: 64, 2: 32, 4: 32, 8: 32}
IN_MULTIPLE = 32
PACKAGE = "gemlite==0.6.0.post2"


def problem(cfg: LayerConfig, in_features: int, out_features: int) -> str | None:
    """Why gemlite cannot serve an (out, in) layer quantized with `cfg`, or None."""
    why = cfg.problem(in_features, out_features)
    if why:
        return why
    if cfg.nbits not in BITS:
        return f"gemlite serves only 1/2/4/8-bit weights, not {cfg.nbits:g}-bit"
    group = cfg.group_size or in_features  # null: one group per row (gemlite's channel-wise mode)
    if group < MIN_GROUP[cfg.nbits]:
        return (f"gemlite needs group_size >= {MIN_GROUP[cfg.nbits]} at {cfg.nbits:g} bits, "
                f"not {group}")
    if in_features % group:
        return f"gemlite needs group_size ({group}) to divide in_features ({in_features})"
    if in_features % IN_MULTIPLE:
        return f"gemlite needs in_features % {IN_MULTIPLE} == 0, not {in_features}"
    return None


def convert(layer):
    """A gemlite layer computing what `layer` (HQQ's packed layer, left intact) computes."""
    from gemlite.helper import A16Wn

    # del_orig=False: the packed layer stays usable (the layer cache hands it out again)
    return A16Wn(device=str(layer.W_q.device), dtype=layer.compute_dtype).from_hqqlinear(
        layer, del_orig=False)


BACKEND = Backend("gemlite", "gemlite Triton kernels (CUDA; 1/2/4/8-bit, group >= 32)",
                  ("cuda",), "hqq", problem, convert, PACKAGE)
