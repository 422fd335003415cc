"""Save a quantized model and load it back.

A saved folder holds `qmodel.pt` (layer name -> state dict; a quantized layer's is
its method's saved form: for HQQ, hqq's own layer state), `plan.json` (the plan
with its metrics), `autoq.json` (what rebuilds the architecture) and, for LMs,
`config.json` plus the tokenizer. Unquantized float tensors are stored in 16 bits
(fp16, or bf16 when computing in bf16), so the files weigh what `size_mib` says.
A tied embedding and head are stored once: the second name holds `{"tied_to":
first}`. An expert parameter with some quantized experts stores its other experts
one by one (`<module>.<param>.<e>`: {"weight"}).

`autoq.json` also says which loaders can read the folder (`loaders`): autoq's
always, and each method's own package's loader where it can (the method says why
not, e.g. autoq.quant.hqq's `loaders`), and an image classifier's class names
(`class_names`) when its task has them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import UserError, deprecated
from ..io import umask
from ..plan import Plan
from ..quant import DEFAULT_METHOD, METHODS, method_of
from ..quant.layers import LAYER_TYPES
from ..quant.model import QuantizedModel
from ..quant.modules import ExpertWeights
from ..quant.size import storage_dtype
from .base import LoadedModel
from .kinds import KINDS

WEIGHTS = "qmodel.pt"
FORMAT = "autoq.saved/1"
TIED = "tied_to"
AUTOQ_LOADER = "autoq.load"


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


def serialize(qm: QuantizedModel, dtype: torch.dtype = torch.float16) -> dict[str, dict]:
    """Layer name -> its tensors: quantized layers' saved forms (with their method's
    name under METHOD_KEY), then every module's own parameters and persistent buffers,
    then the unquantized experts of partly quantized expert parameters."""
    weights: dict[str, dict] = {}
    first: dict[int, str] = {}
    _stored = _Stored(dtype)
    model = qm.model
    for name, layer in qm.installed.items():
        if id(layer) in first:
            weights[name] = {TIED: first[id(layer)]}
            continue
        first[id(layer)] = name
        state = method_of(layer).state(layer)
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
def round_to_storage_(qm: QuantizedModel, dtype: torch.dtype) -> None:
    """Round every unquantized float tensor (and quantized layers' biases) to the saved
    dtype, in place, so the model in memory computes what the saved one will."""
    seen: set[int] = set()

    def round_(t: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and id(t) not in seen:
            seen.add(id(t))
            t.copy_(t.to(dtype))

    for layer in qm.installed.values():
        round_(layer.bias)
    for module in qm.model.modules():
        saved = [b for k, b in module._buffers.items()
                 if k not in module._non_persistent_buffers_set]  # the others are rebuilt
        for t in [*module._parameters.values(), *saved]:
            round_(t)
        for value in module.__dict__.values():
            if isinstance(value, ExpertWeights):
                for t in value.fp:
                    round_(t)


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
        weights = serialize(loaded.quantized, storage_dtype(loaded.dtype))
        torch.save(weights, tmp / WEIGHTS)
        loaded.kind.save_extras(loaded, tmp)
        family = loaded.kind.arch(loaded).get("family")
        loaders = {AUTOQ_LOADER: "yes"}
        for method in {method_of(layer) for layer in loaded.quantized.installed.values()} \
                or {METHODS.get(DEFAULT_METHOD)}:
            loaders.update(method.loaders(loaded.quantized, family, weights))
        meta = {"format": FORMAT, "model": loaded.spec, "kind": loaded.kind.name,
                "heads": sorted(loaded.heads), "arch": loaded.kind.arch(loaded),
                "methods": {n: method_of(layer).name
                            for n, layer in loaded.quantized.installed.items()},
                "loaders": loaders}
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


def kind_of(folder: str | Path):
    """The kind (autoq.models.kinds) of a saved folder, read from its autoq.json."""
    try:
        return KINDS[json.loads((Path(folder) / "autoq.json").read_text())["kind"]]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{folder}: not a folder written by `autoq apply` "
                        f"({e.__class__.__name__}); give the --out folder of apply.")


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
    qm, cast = QuantizedModel(model), _Cast(device, dtype)
    units, methods = qm.units, meta.get("methods")
    if methods is None:
        deprecated(f"{folder}/autoq.json without \"methods\" (saved by autoq 0.1: HQQ only)",
                   "a folder saved by `autoq apply` now")
        methods = {n: DEFAULT_METHOD for n, state in weights.items() if "W_q" in state}
    for name, state in weights.items():
        method = methods.get(name)
        if method is not None and TIED not in state:
            qm.put(name, METHODS.get(method).load(state, LAYER_TYPES[units[name].type].transposed,
                                                  device, dtype))
    for name, state in weights.items():
        if name in qm.installed:
            continue
        if TIED in state:
            qm.put(name, qm.installed[state[TIED]])
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
                       arch=meta["arch"], class_names=meta.get("class_names"), quantized=qm,
                       **kind.extras(folder, model))
