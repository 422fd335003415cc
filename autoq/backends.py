"""Serving backends: which kernels run the quantized layers at inference time.

- `hqq`: HQQ's torch backend (dequantize, then matmul); serves every HQQ config,
  on any device. It is also the per-layer fallback of the other backends.
- `gemlite`: gemlite's Triton kernels (CUDA only). It serves a layer only when
  `gemlite_problem` finds nothing wrong: 1/2/4/8-bit, group_size >= 16 dividing
  in_features (a null group means one group of in_features), in_features % 32 == 0,
  and axis=1 (what autoq always quantizes with).

`prepare_(model, backend)` converts, layer by layer, every HQQLinear the backend
serves and leaves the others as HQQLinear, returning what it did (the caller
prints it and stores it with the evaluation): never a silent no-op, never a
destroyed layer (hqq's `prepare_for_inference` can do both). gemlite is imported
only when a layer is converted: `import gemlite` fails on a machine without a GPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .plan import LayerConfig

GEMLITE_BITS = (1, 2, 4, 8)
GEMLITE_MIN_GROUP = 16
GEMLITE_IN_MULTIPLE = 32
GEMLITE_PACKAGE = "gemlite==0.6.0.post2"


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    needs_cuda: bool
    problem: Callable[[LayerConfig, int, int], str | None]  # why it cannot serve a layer
    convert: Callable[[nn.Module], nn.Module] | None        # HQQLinear -> served module


BACKENDS: dict[str, Backend] = {}


def register(name: str, summary: str, needs_cuda: bool,
             problem: Callable[[LayerConfig, int, int], str | None]):
    def deco(convert):
        BACKENDS[name] = Backend(name, summary, needs_cuda, problem, convert)
        return convert
    return deco


# ---- selection rules (pure) ---------------------------------------------------------
def hqq_problem(cfg: LayerConfig, in_features: int, out_features: int) -> str | None:
    return cfg.problem(in_features, out_features)


def gemlite_problem(cfg: LayerConfig, in_features: int, out_features: int) -> str | None:
    """Why gemlite cannot serve an (out, in) layer quantized with `cfg`, or None."""
    why = cfg.problem(in_features, out_features)
    if why:
        return why
    if cfg.nbits not in GEMLITE_BITS:
        return f"gemlite serves only 1/2/4/8-bit weights, not {cfg.nbits:g}-bit"
    group = cfg.group_size or in_features  # null: one group per row (gemlite's channel-wise mode)
    if group < GEMLITE_MIN_GROUP:
        return f"gemlite needs group_size >= {GEMLITE_MIN_GROUP}, not {group}"
    if in_features % group:
        return f"gemlite needs group_size ({group}) to divide in_features ({in_features})"
    if in_features % GEMLITE_IN_MULTIPLE:
        return f"gemlite needs in_features % {GEMLITE_IN_MULTIPLE} == 0, not {in_features}"
    return None


def served_by(cfg: LayerConfig | None, in_features: int, out_features: int,
              backend: str) -> str:
    """Which kernels run this layer under `backend`: "fp", "hqq" or "gemlite"."""
    if cfg is None:
        return "fp"
    if BACKENDS[backend].problem(cfg, in_features, out_features) is None:
        return backend
    return "hqq"


def servable(backend: str) -> Callable[[LayerConfig, int, int], bool]:
    """`(cfg, in, out) -> bool`: does `backend` itself serve that layer (no fallback)?"""
    problem = BACKENDS[backend].problem
    return lambda cfg, fin, fout: problem(cfg, fin, fout) is None


# ---- availability -------------------------------------------------------------------
def gemlite_installed() -> bool:
    return importlib.util.find_spec("gemlite") is not None


def require_backend(name: str, device: torch.device | str) -> str:
    """The backend to use on `device` ("auto": gemlite on CUDA when installed, else hqq)."""
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if name == "auto":
        return "gemlite" if cuda and gemlite_installed() else "hqq"
    if name not in BACKENDS:
        raise UserError(f"--backend {name!r} is not one of auto, {', '.join(BACKENDS)}.")
    if BACKENDS[name].needs_cuda and not cuda:
        raise UserError(f"--backend {name} needs a CUDA GPU and this run is on {device.type}; "
                        "use --backend hqq (or run on a GPU machine).")
    if name == "gemlite" and not gemlite_installed():
        raise UserError(f"--backend gemlite needs the gemlite package: run "
                        f"`pip install '{GEMLITE_PACKAGE}'` (or use --backend hqq).")
    return name


# ---- conversion (side effects) -------------------------------------------------------
@register("hqq", "HQQ's torch backend (dequantize + matmul), any device", False, hqq_problem)
def _keep(layer: nn.Module) -> nn.Module:
    return layer


@register("gemlite", "gemlite Triton kernels (CUDA; 1/2/4/8-bit, group >= 16)", True,
          gemlite_problem)
def to_gemlite(layer: nn.Module) -> nn.Module:
    """A gemlite layer computing what `layer` (an HQQLinear, left intact) computes."""
    from gemlite.helper import A16Wn

    # del_orig=False: the HQQLinear stays usable (the layer cache hands it out again)
    return A16Wn(device=str(layer.W_q.device), dtype=layer.compute_dtype).from_hqqlinear(
        layer, del_orig=False)


class Served(nn.Module):
    """A quantized layer served by a backend's kernel; the HQQ layer it was made from is
    kept (not a submodule) for model code that reads `.weight` and for the layer cache."""

    served = True

    def __init__(self, kernel: nn.Module, hqq: nn.Module):
        super().__init__()
        self.kernel = kernel
        object.__setattr__(self, "hqq", hqq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)

    @property
    def weight(self):
        return self.hqq.weight


NOT_MATMULS = {"embedding": "a lookup: rows are gathered from HQQ's packed table",
               "expert": "an expert: dequantized one expert at a time in torch"}


def prepare_(model: nn.Module, backend: str) -> dict:
    """Serve every quantized linear layer of `model` with `backend` where it can, in place.

    Returns {"backend", "gemlite_layers": converted count, "fallback": {name: reason}}:
    the quantized layers that stay on HQQ's torch backend, and why.
    """
    from .layers import set_module, units_of
    from .quant import installed, layer_config

    b = BACKENDS[backend]
    converted, fallback = 0, {}
    if backend == "hqq":  # the HQQ layers are HQQ's torch backend already
        return {"backend": backend, "gemlite_layers": 0, "fallback": fallback}
    units = units_of(model)
    for name, layer in installed(model).items():
        why = NOT_MATMULS.get(units[name].type) or \
            b.problem(layer_config(layer), layer.in_features, layer.out_features)
        if why is None and layer.meta.get("axis", 1) != 1:
            why = f"{b.name} needs axis=1, not axis={layer.meta['axis']}"
        if why:
            fallback[name] = why
            continue
        set_module(model, name, Served(b.convert(layer), layer))
        converted += 1
    return {"backend": backend, "gemlite_layers": converted, "fallback": fallback}
