"""Save a quantized model and load it back.

A saved folder holds `qmodel.pt` (HQQ's serialized weights: layer name -> state
dict; a quantized layer's is HQQ's raw HQQLinear state), `plan.json` (the plan
with its metrics), `autoq.json` (what rebuilds the architecture) and, for LMs,
`config.json` plus the tokenizer. Unquantized float tensors are stored in 16 bits
(fp16, or bf16 when computing in bf16), so the files weigh what `size_mib` says.
A tied embedding and head are stored once: the second name holds `{"tied_to":
first}`. An expert parameter with some quantized experts stores its other experts
one by one (`<module>.<param>.<e>`: {"weight"}).

`autoq.json` also says which loaders can read the folder (`loaders`): autoq's
always; hqq's `AutoHQQHFModel.from_quantized` only when every quantized layer is a
plain `nn.Linear` of a transformers LM (`hqq_problem` says why not otherwise), and
an image classifier's class names (`class_names`) when its task has them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .io import umask
from .kinds import KINDS
from .layers import LAYER_TYPES, ORIGINALS, units_of
from .models import LoadedModel
from .plan import Plan
from .qmodules import ExpertWeights
from .quant import installed, meta_16bit, put

WEIGHTS = "qmodel.pt"
FORMAT = "autoq.saved/1"
TIED = "tied_to"
AUTOQ_LOADER = "autoq.load"
HQQ_LOADER = "hqq.models.hf.base.AutoHQQHFModel.from_quantized"


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """How unquantized floats are saved: bf16 when computing in bf16, else fp16."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float16


class _Stored:
    """Tensors as saved: floats in `dtype`, a view copied (torch.save would write the
    whole storage it views); one tensor shared by two modules (a tied embedding and
    head) stays one saved tensor."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.done = dtype, {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.dtype)
        if key not in self.done:
            out = t.detach()
            out = out.to(self.dtype) if out.is_floating_point() else out
            if out.untyped_storage().nbytes() != out.numel() * out.element_size():
                out = out.clone()
            self.done[key] = out
        return self.done[key]


def serialize(model: nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, dict]:
    """Layer name -> its tensors: quantized layers' HQQ states, then every module's own
    parameters and persistent buffers, then the unquantized experts of partly
    quantized expert parameters."""
    weights: dict[str, dict] = {}
    first: dict[int, str] = {}
    _stored = _Stored(dtype)
    for name, layer in installed(model).items():
        if id(layer) in first:
            weights[name] = {TIED: first[id(layer)]}
            continue
        first[id(layer)] = name
        layer.encoded_state_dict = False
        state = dict(layer.state_dict())
        if isinstance(state.get("bias"), torch.Tensor):
            state["bias"] = _stored(state["bias"])
        weights[name] = state
    for name, module in model.named_modules():
        if id(module) in first:
            continue
        own = {k: _stored(v) for k, v in module._parameters.items() if v is not None}
        own.update({k: _stored(v) for k, v in module._buffers.items()
                    if v is not None and k not in module._non_persistent_buffers_set})
        if own:
            weights[name] = own
        for attr, value in module.__dict__.items():
            if isinstance(value, ExpertWeights):
                for e, layer in enumerate(value.layers):
                    if layer is None:
                        weights[f"{name}.{attr}.{e}"] = {"weight": _stored(value.fp[e])}
    return weights


@torch.no_grad()
def round_to_storage_(model: nn.Module, dtype: torch.dtype) -> None:
    """Round every unquantized float tensor (and quantized layers' biases) to the saved
    dtype, in place, so the model in memory computes what the saved one will."""
    seen: set[int] = set()

    def round_(t: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and id(t) not in seen:
            seen.add(id(t))
            t.copy_(t.to(dtype))

    for layer in installed(model).values():
        round_(layer.bias)
    for module in model.modules():
        saved = [b for k, b in module._buffers.items()
                 if k not in module._non_persistent_buffers_set]  # the others are rebuilt
        for t in [*module._parameters.values(), *saved]:
            round_(t)
        for value in module.__dict__.values():
            if isinstance(value, ExpertWeights):
                for t in value.fp:
                    round_(t)


def hqq_problem(loaded: LoadedModel, weights: dict[str, dict]) -> str | None:
    """Why hqq 0.2.8's loader cannot rebuild this saved model, or None. It rebuilds a
    transformers model and turns every saved state with `W_q` into a plain HQQLinear;
    it matches layer types exactly (`type(m) in [nn.Linear, HQQLinear, ...]`) and
    loads leaf modules only."""
    if loaded.kind.arch(loaded).get("family") != "hf":
        return "it rebuilds transformers models only (AutoHQQHFModel), not timm ones"
    units = units_of(loaded.model)
    for name in installed(loaded.model):
        unit = units[name]
        if unit.type == "embedding":
            return (f"{name} is a quantized embedding, which it would rebuild as an "
                    "HQQLinear (a matmul, not a lookup)")
        if unit.type == "expert":
            return f"{name} is a quantized MoE expert, stored per expert, which it does not read"
        cls = type(getattr(loaded.model, ORIGINALS)[name])
        if cls is not nn.Linear:
            return (f"{name} is a {cls.__name__}, not exactly nn.Linear: it loads such a layer "
                    "in its first pass and then fails on it with \"'HQQLinear' object has no "
                    "attribute 'name'\"")
    modules = dict(loaded.model.named_modules())
    for name in weights:
        if name in modules and next(modules[name].children(), None) is not None:
            return (f"{name or 'the model'} holds tensors beside submodules, and it loads "
                    "leaf modules only")
    return None


def save(loaded: LoadedModel, plan: Plan, out: str | Path, overwrite: bool = False,
         verify: Callable[[Path], None] | None = None) -> Path:
    """Write the folder under a temporary name, run `verify(tmp_folder)` (which raises
    if the saved model is wrong), then rename: never half-written, never wrong."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} exists and is not empty; pick a new folder or pass --force.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700
        weights = serialize(loaded.model, storage_dtype(loaded.dtype))
        torch.save(weights, tmp / WEIGHTS)
        loaded.kind.save_extras(loaded, tmp)
        hqq = hqq_problem(loaded, weights)
        meta = {"format": FORMAT, "model": loaded.spec, "kind": loaded.kind.name,
                "heads": sorted(loaded.heads), "arch": loaded.kind.arch(loaded),
                "loaders": {AUTOQ_LOADER: "yes", HQQ_LOADER: f"no: {hqq}" if hqq else "yes"}}
        if loaded.class_names:
            meta["class_names"] = list(loaded.class_names)
        (tmp / "autoq.json").write_text(json.dumps(meta, indent=2) + "\n")
        plan.save(tmp / "plan.json")
        if verify is not None:
            verify(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class _Cast:
    """Loaded tensors moved to the device and dtype once each (shared ones stay shared)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype, self.done = device, dtype, {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.dtype)
        if key not in self.done:
            self.done[key] = t.to(device=self.device, dtype=self.dtype) \
                if t.is_floating_point() else t.to(self.device)
        return self.done[key]


def load(folder: str | Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    folder = Path(folder)
    try:
        meta = json.loads((folder / "autoq.json").read_text())
        weights = torch.load(folder / WEIGHTS, map_location=device, weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{folder}: not a folder written by `autoq apply` "
                        f"({e.__class__.__name__}); give the --out folder of apply.")
    kind = KINDS[meta["kind"]]
    model = kind.skeleton(folder, meta["arch"], dtype)
    units, cast = units_of(model), _Cast(device, dtype)
    quantized = {n: s for n, s in weights.items() if "W_q" in s}
    for name, state in quantized.items():
        unit = units[name]
        layer = LAYER_TYPES[unit.type].quantized_class(None, None, compute_dtype=dtype,
                                                       device=str(device))
        layer.load_state_dict(dict(state))
        put(model, unit, meta_16bit(layer))
    for name, state in weights.items():
        if name in quantized:
            continue
        if TIED in state:
            put(model, units[name], installed(model)[state[TIED]])
        elif name in units and units[name].type == "expert":
            unit = units[name]
            experts = model.get_submodule(unit.module).__dict__[unit.param]
            experts.fp[unit.index] = cast(state["weight"])
        else:
            module = model.get_submodule(name)
            for key, value in state.items():
                if key in module._buffers:
                    module._buffers[key] = cast(value)
                else:
                    setattr(module, key, nn.Parameter(cast(value), requires_grad=False))
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(meta["model"], kind, model, device, dtype, set(meta["heads"]),
                       arch=meta["arch"], class_names=meta.get("class_names"),
                       **kind.extras(folder, model))
