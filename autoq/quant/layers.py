"""Quantizable layers: every weight matrix autoq can quantize, found by structure and
named for plans. One registered class per layer type says how its matrix is read
and how a quantized matrix is put back so that the model's own forward still works:

| type      | found as                                  | plan name                    | quantized as                 |
|-----------|-------------------------------------------|------------------------------|------------------------------|
| linear    | nn.Linear (and subclasses)                | the module's name            | the module -> packed layer   |
| conv1d    | transformers' Conv1D (weight is in x out) | the module's name            | the module -> packed, (in,out) |
| embedding | nn.Embedding (and subclasses)             | the module's name            | its table -> packed rows     |
| expert    | one expert of a 3-D expert parameter      | `<module>.<param>.<expert>`  | that expert's matrix         |

Every quantized matrix is one packed layer (autoq.quant's method) over the matrix as
(out_features, in_features): an embedding table (vocab, hidden) is quantized like a
linear hidden -> vocab, groups along the hidden dimension. So sizes, the layer cache,
saving and serving treat all types alike, and a tied embedding and head (one
Parameter) get one quantized tensor from the cache.

`find(model)` runs once, on the unquantized model; what it finds (the units, the
original modules, the parameters no type quantizes) is kept by the quantized-model
object (autoq.quant.model), which every function here takes as `qm`. Other weight-bearing
parameters (Conv2d patch embeddings, routers that are not nn.Linear, position and
class tokens read directly) cannot be quantized; `unsupported` names them and why.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .modules import ExpertWeights, lookup


@dataclass(frozen=True)
class Unit:
    name: str            # the plan key
    type: str            # linear | conv1d | embedding | expert
    in_features: int
    out_features: int
    module: str          # the module that holds the weight
    param: str = "weight"
    index: int | None = None   # experts: which expert of the 3-D parameter

    @property
    def shape(self) -> tuple[int, int]:
        return self.in_features, self.out_features

    @property
    def weights(self) -> int:
        return self.in_features * self.out_features


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 style): a linear layer whose weight is (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and \
        getattr(module, "weight", None) is not None and module.weight.dim() == 2


# ---- the layer types ----------------------------------------------------------------
class LayerType:
    name: str
    transposed: bool = False   # the model reads the weight as (in, out)

    def find(self, name: str, module: nn.Module) -> Iterator[Unit]:
        raise NotImplementedError

    def param(self, qm, unit: Unit) -> nn.Parameter:
        """The original parameter that holds the unit's weight."""
        return getattr(qm.originals[unit.name], unit.param)

    def view(self, qm, unit: Unit, t: torch.Tensor) -> torch.Tensor:
        """The unit's part of a tensor shaped like its parameter (the parameter itself,
        its gradient), as (out_features, in_features)."""
        return t

    def matrix(self, qm, unit: Unit) -> torch.Tensor:
        """The unit's weight as (out_features, in_features), from the original model."""
        return self.view(qm, unit, self.param(qm, unit))

    def bias(self, qm, unit: Unit) -> torch.Tensor | None:
        return getattr(qm.originals[unit.name], "bias", None)

    def source(self, qm, unit: Unit) -> tuple:
        """What identifies the matrix (tied layers share one)."""
        return id(self.param(qm, unit)), unit.index

    def install(self, qm, unit: Unit, layer: nn.Module | None) -> None:
        """Put `layer` (a quantized matrix) in the model, or the original back (None)."""
        set_module(qm.model, unit.name, qm.originals[unit.name] if layer is None else layer)


class Linear(LayerType):
    name = "linear"

    def find(self, name, module):
        if isinstance(module, nn.Linear):
            yield Unit(name, self.name, module.in_features, module.out_features, name)


class Conv1D(LayerType):
    name, transposed = "conv1d", True

    def find(self, name, module):
        if is_conv1d(module):
            nx, nf = module.weight.shape
            yield Unit(name, self.name, nx, nf, name)

    def view(self, qm, unit, t):
        return t.t()


class Embedding(LayerType):
    name = "embedding"

    def find(self, name, module):
        if isinstance(module, nn.Embedding) and module.weight is not None:
            yield Unit(name, self.name, module.embedding_dim, module.num_embeddings, name)

    def bias(self, qm, unit):
        return None

    def install(self, qm, unit, layer):
        base = qm.originals[unit.name]
        set_module(qm.model, unit.name, base if layer is None else lookup(base, layer))


class Expert(LayerType):
    """transformers 5 MoE experts: a module (with `num_experts`, or named `experts`)
    holding 3-D parameters (experts, out, in), or (experts, in, out) when the module
    says `is_transposed`; each expert's matrix is a unit. The experts module runs its eager forward while any expert is quantized
    (it indexes one expert at a time; the batched forms need the whole tensor)."""
    name = "expert"

    def find(self, name, module):
        transposed = bool(getattr(module, "is_transposed", False))
        experts = getattr(module, "num_experts", None)
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() == 3 and p.is_floating_point() and p.shape[0] > 1 and \
                    (p.shape[0] == experts or name.rpartition(".")[2] == "experts"):
                n_exp, a, b = p.shape
                fin, fout = (a, b) if transposed else (b, a)
                for e in range(n_exp):
                    yield Unit(f"{name}.{pname}.{e}", self.name, fin, fout, name, pname, e)

    def param(self, qm, unit):
        return qm.originals[f"{unit.module}.{unit.param}"]

    def view(self, qm, unit, t):
        transposed = getattr(qm.model.get_submodule(unit.module), "is_transposed", False)
        return t[unit.index].t() if transposed else t[unit.index]

    def bias(self, qm, unit):
        return None

    def install(self, qm, unit, layer):
        module = qm.model.get_submodule(unit.module)
        current = module.__dict__.get(unit.param)
        if not isinstance(current, ExpertWeights):
            if layer is None:
                return
            current = ExpertWeights(self.param(qm, unit),
                                    bool(getattr(module, "is_transposed", False)))
            del module._parameters[unit.param]
            object.__setattr__(module, unit.param, current)
            eager = getattr(type(module).forward, "__wrapped__", None)
            if eager is not None:  # transformers' experts-implementation dispatch
                object.__setattr__(module, "forward", types.MethodType(eager, module))
        current.set(unit.index, layer)
        if current.all_fp():
            del module.__dict__[unit.param]
            module.register_parameter(unit.param, current.original)
            module.__dict__.pop("forward", None)


LAYER_TYPES: dict[str, LayerType] = {t.name: t for t in (Linear(), Conv1D(), Embedding(),
                                                         Expert())}


# ---- finding them -------------------------------------------------------------------
def find(model: nn.Module) -> tuple[dict[str, Unit], dict, dict[str, tuple[int, str]]]:
    """Every quantizable matrix of the (unquantized) `model` as name -> Unit, the original
    module of each (the 3-D parameter for experts), and the weight-bearing parameters no
    layer type quantizes: name -> (weights, reason)."""
    found: dict[str, Unit] = {}
    originals: dict = {}
    covered: set[int] = set()
    for name, module in model.named_modules():
        for t in LAYER_TYPES.values():
            for unit in t.find(name, module):
                found[unit.name] = unit
                if unit.type == "expert":
                    originals[f"{name}.{unit.param}"] = getattr(module, unit.param)
                else:
                    originals[unit.name] = module
                covered.add(id(getattr(module, unit.param)))
    return found, originals, _unsupported(model, covered)


def _unsupported(model: nn.Module, covered: set[int]) -> dict[str, tuple[int, str]]:
    out = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() < 2 or not p.is_floating_point() or id(p) in covered:
                continue
            out[f"{mname}.{pname}" if mname else pname] = (p.numel(), _why(module, p))
    return out


def _why(module: nn.Module, p: torch.Tensor) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"{type(module).__name__}: a convolution, not a matrix autoq quantizes"
    if "router" in type(module).__name__.lower():
        return "a router (kept in full precision; it picks the experts)"
    return f"a {p.dim()}-D parameter the model reads directly ({type(module).__name__})"
