"""Image classifiers from timm: `digits-vit` (a small ViT trained on the digits, its
weights shipped with autoq), `deit` (DeiT-S, 100-way head) and `timm:<name>`.

`timm:<name>?key=value&...` passes keyword arguments to `timm.create_model`
(for example `timm:vit_tiny_patch16_224?depth=2&img_size=32`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..kinds import KINDS
from . import LoadedModel, register

DEIT = "deit_small_patch16_224"
DEIT_KWARGS: dict = {}  # architecture overrides (tests use a tiny stand-in here)
NUM_CLASSES = 100
# digits-vit: 16x16 RGB input, 4x4 patches (16 tokens + class token), 4 blocks of width
# 128 (every block linear has in_features 128 or 512: group sizes 32, 64, 128 all fit)
DIGITS_VIT = "vit_tiny_patch16_224"
DIGITS_KWARGS = dict(img_size=16, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                     mlp_ratio=4, num_classes=10)
DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits-vit.pt"


def _literal(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse_timm_spec(spec: str) -> tuple[str, dict]:
    name, _, query = spec.partition("?")
    kwargs = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise UserError(f"timm:{spec}: {part!r} is not key=value.")
        kwargs[key] = _literal(value)
    return name, kwargs


def read_checkpoint(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--checkpoint {path}: no such file; give a saved state dict (.pt/.pth).")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or pickled code: all the user's file
        raise UserError(f"--checkpoint {path}: not a readable weights-only state dict "
                        f"({e.__class__.__name__}); save it with torch.save(model.state_dict()).")
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"--checkpoint {path}: not a state dict of tensors.")
    return obj


def eval_transform(model):
    """timm's eval transform for `model`, at the image size it was built for (a model
    created with `img_size=32` keeps its pretrained config's 224 otherwise)."""
    from timm.data import create_transform, resolve_data_config

    from ..speed import vit_input_size

    config = resolve_data_config({"input_size": vit_input_size(model)}, model=model)
    return create_transform(**config, is_training=False)


def load_vit(name: str, kwargs: dict, device, dtype, checkpoint: str | None) -> LoadedModel:
    import timm

    state = read_checkpoint(checkpoint) if checkpoint else None
    if state is not None and "head.weight" in state:
        kwargs = {"num_classes": state["head.weight"].shape[0], **kwargs}
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    try:
        model = timm.create_model(name, pretrained=state is None, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UserError(f"timm has no model {name!r}; see timm.list_models('*vit*').")
        raise UserError(f"could not get pretrained weights for {name!r} ({e.__class__.__name__}); "
                        "offline, pass a state dict with --checkpoint FILE.")
    except Exception as e:
        raise UserError(f"could not get pretrained weights for {name!r} ({e.__class__.__name__}); "
                        "offline, pass a state dict with --checkpoint FILE.")
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise UserError(f"--checkpoint {checkpoint} does not fit {name} ({first[:160]}); "
                            "give a state dict of that architecture.")
    model.to(device=device, dtype=dtype)
    arch = {"family": "timm", "name": name, "kwargs": kwargs}
    return LoadedModel("", KINDS["vit"], model, device, dtype, transform=eval_transform(model),
                       arch=arch)


@register("deit", "vit", f"DeiT-S ({DEIT}, timm) with a {NUM_CLASSES}-class head",
          "--checkpoint FILE with a CIFAR-100 fine-tuned state dict (else ImageNet weights "
          "from the hub and an untrained head)")
def deit(_: str, device, dtype, checkpoint=None) -> LoadedModel:
    return load_vit(DEIT, dict(DEIT_KWARGS), device, dtype, checkpoint)


@register("digits-vit", "vit", "small ViT (4 blocks, width 128, 16x16 input) trained on "
          "scikit-learn's 8x8 digits by scripts/train_digits_vit.py; usual task: digits",
          "nothing: its weights ship with autoq (--checkpoint FILE: a retrained state dict)",
          default_task="digits")
def digits_vit(_: str, device, dtype, checkpoint=None) -> LoadedModel:
    if checkpoint is None and not DIGITS_WEIGHTS.is_file():
        raise UserError(f"digits-vit: its weights {DIGITS_WEIGHTS} are missing from this "
                        "install; reinstall autoq or run scripts/train_digits_vit.py.")
    return load_vit(DIGITS_VIT, dict(DIGITS_KWARGS), device, dtype,
                    checkpoint or str(DIGITS_WEIGHTS))


@register("timm:", "vit", "any timm ViT: timm:<name>[?create_model kwargs]",
          "internet for pretrained weights, or --checkpoint FILE")
def timm_any(spec: str, device, dtype, checkpoint=None) -> LoadedModel:
    name, kwargs = parse_timm_spec(spec)
    return load_vit(name, kwargs, device, dtype, checkpoint)

