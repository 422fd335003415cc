"""`hqq`: the quantization method's own torch forward (HQQ: dequantize the packed matrix,
then matmul), on any device. Every config the method makes runs here, so it is also
every other backend's per-layer fallback."""

from .backend import Backend

BACKEND = Backend("hqq", "HQQ's torch backend (dequantize + matmul), any device",
                  ("cpu", "cuda"), None, lambda cfg, fin, fout: None, None)
