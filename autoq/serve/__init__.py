"""Serving: which kernels run the quantized layers, and running a model.

Backends (`BACKENDS`, one file each; autoq/serve/backend.py says what one is):

- `hqq`: the method's own torch forward (HQQ: dequantize, then matmul); serves every
  config on any device, and is every other backend's per-layer fallback;
- `gemlite`: gemlite's Triton kernels (CUDA; 1/2/4/8-bit, group >= 32);
- `torch-int4`: torch's own int4 CPU kernels (every HQQ layer exactly: <= 4-bit in one
  call, 8-bit as two 4-bit halves, the rest dequantized once), `--backend auto` on a CPU.

Beside them: speed.py (honest timing of a whole model), latency.py (a plan's time
predicted from per-layer timings: in the decode on a CPU (calibrate.py), CUDA graphs on
a GPU), generate.py / predict.py (running a saved model), gguf.py (export for
llama.cpp). Importing this package imports no torch: the CLI checks `--backend` by name.
"""

from __future__ import annotations

from ..errors import UserError
from ..registry import Registry

BACKENDS = Registry("serving backend", {
    "hqq": "autoq.serve.hqq:BACKEND",
    "gemlite": "autoq.serve.gemlite:BACKEND",
    "torch-int4": "autoq.serve.torch_int4:BACKEND",
})
AUTO = {"cuda": ("gemlite", "hqq"), "cpu": ("torch-int4", "hqq")}  # --backend auto: the first
#                                                                    installed
DEVICES = {"cuda": "a CUDA GPU", "cpu": "a CPU"}
ENGINES = ("auto", "generate", "static", "compiled")   # decode loops of autoq.serve.generate


def require_backend(name: str, device) -> str:
    """The backend to use on `device` ("auto": the first of AUTO[device type] that is
    installed), or one sentence on why `name` cannot serve there."""
    import torch

    device = torch.device(device)
    kind = "cuda" if device.type == "cuda" and torch.cuda.is_available() else "cpu"
    if name == "auto":
        return next(n for n in AUTO[kind] if BACKENDS.get(n).installed())
    if name not in BACKENDS:
        raise UserError(f"--backend {name!r} is not one of auto, {', '.join(BACKENDS.names)}.")
    backend = BACKENDS.get(name)
    if kind not in backend.devices:
        other = next(n for n in AUTO[kind] if BACKENDS.get(n).installed())
        raise UserError(f"--backend {name} needs {' or '.join(DEVICES[d] for d in backend.devices)}"
                        f" and this run is on {device.type}; use --backend {other} (or run on "
                        "such a machine).")
    if not backend.installed():
        raise UserError(f"--backend {name} needs the {backend.package.split('=')[0]} package: "
                        f"run `pip install '{backend.package}'` (or use --backend auto).")
    return name
