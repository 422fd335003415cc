"""What a serving backend is, and converting a quantized model's layers to it.

A `Backend` (one file per backend, registered in autoq.serve.BACKENDS) says on which
devices it runs, which packed form of a method it converts (`takes`: a method lists
the forms its packed tensors take, autoq.quant.hqq), why it cannot serve a layer
(`problem`, a pure rule), and how it converts one packed layer (`convert`).

`prepare_(qm, backend)` converts, layer by layer, every packed layer the backend
serves and leaves the others on the method's own forward, returning what it did per
layer and why: never a silent no-op, never a destroyed layer (hqq's
`prepare_for_inference` can do both). The report is kept on the quantized model
(`qm.serving`) and printed by the caller.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..quant import LayerConfig, method_of
from . import BACKENDS


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    devices: tuple[str, ...]                               # "cpu", "cuda"
    takes: str | None                                      # the packed form it converts
    problem: Callable[[LayerConfig, int, int], str | None]  # why it cannot serve a layer
    convert: Callable[[nn.Module], nn.Module] | None       # packed layer -> served module
    package: str | None = None                             # its pip requirement, if any
    how: Callable[[LayerConfig, int, int], tuple[str, str]] | None = None  # which of its
    #                                  modules serves a layer, and why that one
    computes_in: str | None = None   # the dtype its kernels compute in (None: the model's)

    def installed(self) -> bool:
        return self.package is None or package_installed(self.package.split("=")[0])


def package_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def served_by(cfg: LayerConfig | None, in_features: int, out_features: int,
              backend: str) -> str:
    """Which kernels run this layer under `backend`: "fp", the backend's name, or "hqq"
    (the method's own forward, the fallback)."""
    if cfg is None:
        return "fp"
    b = BACKENDS.get(backend)
    if b.takes is None or (b.takes in cfg.quant.forms and
                           b.problem(cfg, in_features, out_features) is None):
        return backend
    return "hqq"


def servable(backend: str) -> Callable[[LayerConfig, int, int], bool]:
    """`(cfg, in, out) -> bool`: does `backend` itself serve that layer (no fallback)?"""
    return lambda cfg, fin, fout: served_by(cfg, fin, fout, backend) == backend


class Served(nn.Module):
    """A packed layer served by a backend's kernel; the packed layer it was made from is
    kept (not a submodule) for model code that reads `.weight` and for the layer cache,
    unless released (then `.weight` is the kernel's own dequantized matrix)."""

    served = True

    def __init__(self, kernel: nn.Module, packed: nn.Module | None):
        super().__init__()
        self.kernel = kernel
        object.__setattr__(self, "packed", packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)

    @property
    def weight(self):
        if self.packed is None:
            return self.kernel.dequantize()
        return self.packed.weight


NOT_MATMULS = {"embedding": "a lookup: rows are gathered from the packed table",
               "expert": "an expert: dequantized one expert at a time in torch"}


def fallback_line(fallback: dict[str, str]) -> str:
    """One sentence naming the layers left on the method's own forward, and why."""
    return (f"{len(fallback)} quantized layer{'s stay' if len(fallback) > 1 else ' stays'} "
            "on the method's own torch forward: "
            + "; ".join(f"{name}: {why}" for name, why in fallback.items()))


def plan_serving(qm, backend: str) -> tuple[dict, list[str]]:
    """What `prepare_` would do, without converting anything: (the serving report, the
    layers the backend converts). The report is {"backend", "served_layers": how many it
    converts, "fallback": {name: why that layer stays on the method's own forward}, and
    for a backend with several kernels "layers": {name: which one serves it, and why}}."""
    b = BACKENDS.get(backend)
    converted, fallback, kinds = [], {}, {}
    for name, layer in (qm.installed.items() if b.takes is not None else ()):
        method = method_of(layer)
        cfg = method.config_of(layer)
        why = NOT_MATMULS.get(qm.units[name].type) or \
            (None if b.takes in method.forms else
             f"{b.name} takes {b.takes} tensors, which {method.name} does not make") or \
            b.problem(cfg, layer.in_features, layer.out_features)
        if why is None and method.axis(layer) != 1:
            why = f"{b.name} needs axis=1, not axis={method.axis(layer)}"
        if why:
            fallback[name] = why
            continue
        converted.append(name)
        if b.how is not None:
            kinds[name] = ": ".join(b.how(cfg, layer.in_features, layer.out_features))
    report = {"backend": backend, "served_layers": len(converted), "fallback": fallback}
    if kinds:
        report["layers"] = kinds
    return report, converted


def prepare_(qm, backend: str, release: bool = False) -> dict:
    """Serve every quantized linear layer of the quantized model `qm` with `backend` where
    it can, in place; the serving report (`plan_serving`), kept on `qm.serving`.
    `release`: converted layers drop their packed form (a model only served, never saved
    again); memory_mib in the report is what the served model holds."""
    from ..quant.layers import set_module
    from ..quant.size import MIB, resident_bytes

    report, converted = plan_serving(qm, backend)
    convert = BACKENDS.get(backend).convert
    for name in converted:
        layer = qm.installed[name]
        set_module(qm.model, name, Served(convert(layer), None if release else layer))
    if release:   # a packed layer another unit still uses (a tied embedding) stays
        still = {id(qm.installed[n]) for n in qm.installed if n not in converted}
        for name in converted:
            if id(qm.installed[name]) not in still:
                del qm.installed[name]
    qm.serving = {**report, "memory_mib": resident_bytes(qm) / MIB}
    return qm.serving
