"""Save a quantized model in HQQ's format and load it back.

A saved folder holds `qmodel.pt` (HQQ's serialized weights: module name ->
state dict, as `AutoHQQHFModel.save_quantized` writes, plus the own tensors of
modules with children, which HQQ's writer skips), `plan.json` (the plan
with its metrics), `autoq.json` (what rebuilds the architecture) and, for LMs,
`config.json` plus the tokenizer, so `AutoHQQHFModel.from_quantized(folder)`
also loads it.
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
from .models import LoadedModel
from .plan import Plan
from .quantize import meta_16bit, set_module

WEIGHTS = "qmodel.pt"
FORMAT = "autoq.saved/1"


def serialize(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """HQQ's format: module name -> that module's own tensors (an HQQLinear's raw
    state dict). Unlike HQQ's `serialize_weights`, modules with children keep their
    own parameters too (a ViT's cls_token and pos_embed live on the root module)."""
    from hqq.core.quantize import HQQLinear

    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, HQQLinear):
            module.encoded_state_dict = False
            weights[name] = dict(module.state_dict())
            continue
        own = {k: v.detach() for k, v in module._parameters.items() if v is not None}
        own.update({k: v for k, v in module._buffers.items()
                    if v is not None and k not in module._non_persistent_buffers_set})
        if own:
            weights[name] = own
    return weights


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
        torch.save(serialize(loaded.model), tmp / WEIGHTS)
        loaded.kind.save_extras(loaded, tmp)
        meta = {"format": FORMAT, "model": loaded.spec, "kind": loaded.kind.name,
                "heads": sorted(loaded.heads), "arch": loaded.kind.arch(loaded)}
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


def load(folder: str | Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from hqq.core.quantize import HQQLinear

    folder = Path(folder)
    try:
        meta = json.loads((folder / "autoq.json").read_text())
        weights = torch.load(folder / WEIGHTS, map_location=device, weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{folder}: not a folder written by `autoq apply` "
                        f"({e.__class__.__name__}); give the --out folder of apply.")
    kind = KINDS[meta["kind"]]
    model = kind.skeleton(folder, meta["arch"], dtype)
    for name, state in weights.items():
        if "W_q" in state:
            layer = HQQLinear(None, None, compute_dtype=dtype, device=str(device))
            layer.load_state_dict(dict(state))
            set_module(model, name, meta_16bit(layer))
            continue
        module = model.get_submodule(name)
        for key, value in state.items():
            value = value.to(device=device, dtype=dtype) if value.is_floating_point() \
                else value.to(device)
            if key in module._buffers:
                module._buffers[key] = value
            else:
                setattr(module, key, nn.Parameter(value, requires_grad=False))
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(meta["model"], kind, model, device, dtype, set(meta["heads"]),
                       arch=meta["arch"], **kind.extras(folder, model))
