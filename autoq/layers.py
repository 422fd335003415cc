"""Quantizable layers: every weight matrix autoq can quantize, found by structure and
named for plans. One registered class per layer type says how its matrix is read
and how a quantized matrix is put back so that the model's own forward still works:

| type      | found as                                  | plan name                    | quantized as                 |
|-----------|-------------------------------------------|------------------------------|------------------------------|
| linear    | nn.Linear (and subclasses)                | the module's name            | the module -> QuantLinear    |
| conv1d    | transformers' Conv1D (weight is in x out) | the module's name            | the module -> QuantConv1D    |
| embedding | nn.Embedding (and subclasses)             | the module's name            | its table -> packed rows     |
| expert    | one expert of a 3-D expert parameter      | `<module>.<param>.<expert>`  | that expert's matrix         |

Every quantized matrix is one HQQLinear over the matrix as (out_features,
in_features): an embedding table (vocab, hidden) is quantized like a linear
hidden -> vocab, groups along the hidden dimension. So sizes, the layer cache,
saving and serving treat all types alike, and a tied embedding and head (one
Parameter) get one quantized tensor from the cache. Other weight-bearing
parameters (Conv2d patch embeddings, routers that are not nn.Linear, position and
class tokens read directly) cannot be quantized; `unsupported` names them and why.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .qmodules import ExpertWeights, QuantConv1D, QuantLinear, lookup

UNITS = "_autoq_units"          # name -> Unit, found once on the unquantized model
SKIPPED = "_autoq_unsupported"  # parameter name -> (weights, reason)
ORIGINALS = "_autoq_originals"  # unit name -> its original module (or the 3-D parameter)


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
    quantized_class: type = QuantLinear

    def find(self, name: str, module: nn.Module) -> Iterator[Unit]:
        raise NotImplementedError

    def param(self, model: nn.Module, unit: Unit) -> nn.Parameter:
        """The original parameter that holds the unit's weight."""
        return getattr(original(model, unit), unit.param)

    def view(self, model: nn.Module, unit: Unit, t: torch.Tensor) -> torch.Tensor:
        """The unit's part of a tensor shaped like its parameter (the parameter itself,
        its gradient), as (out_features, in_features)."""
        return t

    def matrix(self, model: nn.Module, unit: Unit) -> torch.Tensor:
        """The unit's weight as (out_features, in_features), from the original model."""
        return self.view(model, unit, self.param(model, unit))

    def bias(self, model: nn.Module, unit: Unit) -> torch.Tensor | None:
        return getattr(original(model, unit), "bias", None)

    def source(self, model: nn.Module, unit: Unit) -> tuple:
        """What identifies the matrix (tied layers share one)."""
        return id(self.param(model, unit)), unit.index

    def install(self, model: nn.Module, unit: Unit, layer: nn.Module | None) -> None:
        """Put `layer` (a quantized matrix) in the model, or the original back (None)."""
        set_module(model, unit.name, original(model, unit) if layer is None else layer)


class Linear(LayerType):
    name = "linear"

    def find(self, name, module):
        if isinstance(module, nn.Linear):
            yield Unit(name, self.name, module.in_features, module.out_features, name)


class Conv1D(LayerType):
    name, quantized_class = "conv1d", QuantConv1D

    def find(self, name, module):
        if is_conv1d(module):
            nx, nf = module.weight.shape
            yield Unit(name, self.name, nx, nf, name)

    def view(self, model, unit, t):
        return t.t()


class Embedding(LayerType):
    name = "embedding"

    def find(self, name, module):
        if isinstance(module, nn.Embedding) and module.weight is not None:
            yield Unit(name, self.name, module.embedding_dim, module.num_embeddings, name)

    def bias(self, model, unit):
        return None

    def install(self, model, unit, layer):
        base = original(model, unit)
        set_module(model, unit.name, base if layer is None else lookup(base, layer))


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

    def param(self, model, unit):
        return getattr(model, ORIGINALS)[f"{unit.module}.{unit.param}"]

    def view(self, model, unit, t):
        transposed = getattr(model.get_submodule(unit.module), "is_transposed", False)
        return t[unit.index].t() if transposed else t[unit.index]

    def bias(self, model, unit):
        return None

    def install(self, model, unit, layer):
        module = model.get_submodule(unit.module)
        current = module.__dict__.get(unit.param)
        if not isinstance(current, ExpertWeights):
            if layer is None:
                return
            current = ExpertWeights(self.param(model, unit),
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
def original(model: nn.Module, unit: Unit) -> nn.Module:
    return getattr(model, ORIGINALS)[unit.name]


def units_of(model: nn.Module) -> dict[str, Unit]:
    """Every quantizable matrix of `model`, found once (before anything is swapped)."""
    if getattr(model, UNITS, None) is None:
        found: dict[str, Unit] = {}
        originals: dict = {}
        covered: set[int] = set()
        for name, module in model.named_modules():
            for t in LAYER_TYPES.values():
                for unit in t.find(name, module):
                    found[unit.name] = unit
                    if unit.type == "expert":
                        originals[f"{name}.{unit.param}"] = getattr(module, unit.param)
                        covered.add(id(getattr(module, unit.param)))
                    else:
                        originals[unit.name] = module
                        covered.add(id(getattr(module, unit.param)))
        object.__setattr__(model, UNITS, found)
        object.__setattr__(model, ORIGINALS, originals)
        object.__setattr__(model, SKIPPED, _unsupported(model, covered))
    return getattr(model, UNITS)


def unsupported(model: nn.Module) -> dict[str, tuple[int, str]]:
    """Weight-bearing parameters no layer type quantizes: name -> (weights, reason)."""
    units_of(model)
    return getattr(model, SKIPPED)


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
        return f"{type(module).__name__}: a convolution, not a matrix HQQ quantizes"
    if "router" in type(module).__name__.lower():
        return "a router (kept in full precision; it picks the experts)"
    return f"a {p.dim()}-D parameter the model reads directly ({type(module).__name__})"


def source_of(model: nn.Module, unit: Unit) -> tuple:
    return LAYER_TYPES[unit.type].source(model, unit)


def matrix_of(model: nn.Module, unit: Unit) -> torch.Tensor:
    """The unit's original weight as (out_features, in_features)."""
    return LAYER_TYPES[unit.type].matrix(model, unit)


def param_of(model: nn.Module, unit: Unit) -> nn.Parameter:
    return LAYER_TYPES[unit.type].param(model, unit)


def view_of(model: nn.Module, unit: Unit, t: torch.Tensor) -> torch.Tensor:
    return LAYER_TYPES[unit.type].view(model, unit, t)


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Units that share one matrix (a tied embedding and head), each group sorted."""
    by: dict[tuple, list[str]] = {}
    for unit in units_of(model).values():
        by.setdefault(source_of(model, unit), []).append(unit.name)
    return [sorted(names) for names in by.values() if len(names) > 1]


def quantize_unit(model: nn.Module, unit: Unit, make: Callable[..., nn.Module]) -> nn.Module:
    """A quantized layer for `unit`, made by `make(weight (out, in), bias, cls)`."""
    t = LAYER_TYPES[unit.type]
    return make(t.matrix(model, unit).detach(), t.bias(model, unit), t.quantized_class)


def install(model: nn.Module, unit: Unit, layer: nn.Module | None) -> None:
    LAYER_TYPES[unit.type].install(model, unit, layer)
