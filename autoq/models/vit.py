"""Image classifiers from timm: `digits-vit` (a small ViT trained on the digits, its
weights shipped with autoq), `deit` (DeiT-S, 100-way head) and `timm:<name>`.

`timm:<name>?key=value&...` passes keyword arguments to `timm.create_model`
(for example `timm:vit_tiny_patch16_224?depth=2&img_size=32`). Values are ints,
floats, true/false or text; a comma makes a tuple (`depths=1,1,1,1` -> (1, 1, 1, 1)).
`pretrained=false` asks for random weights; with `--checkpoint` the model is built
with random weights and the state dict loaded into it.
"""

from __future__ import annotations

from pathlib import Path

from . import hub
from ..errors import UserError
from .base import LoadedModel, register

DEIT = "deit_small_patch16_224"
DEIT_KWARGS: dict = {}  # architecture overrides (tests use a tiny stand-in here)
NUM_CLASSES = 100
# digits-vit: 16x16 RGB input, 4x4 patches (16 tokens + class token), 4 blocks of width
# 128 (every block linear has in_features 128 or 512: group sizes 32, 64, 128 all fit)
DIGITS_VIT = "vit_tiny_patch16_224"
DIGITS_KWARGS = dict(img_size=16, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                     mlp_ratio=4, num_classes=10)
DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits-vit.pt"


def _scalar(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def _literal(v: str):
    if "," in v:
        return tuple(_scalar(x) for x in v.split(",") if x)
    return _scalar(v)


def parse_timm_spec(spec: str) -> tuple[str, dict]:
    name, _, query = spec.partition("?")
    kwargs = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise UserError(f"timm:{spec}: {part!r} is not key=value.")
        kwargs[key] = _literal(value)
    if kwargs.get("pretrained", False) not in (True, False):
        raise UserError(f"timm:{spec}: pretrained={kwargs['pretrained']!r} must be true or false.")
    return name, kwargs


def wants_hub_weights(kwargs: dict, checkpoint: str | None, what: str) -> bool:
    """Pretrained weights from the hub: unless ?pretrained=false or --checkpoint."""
    if checkpoint and kwargs.get("pretrained") is True:
        raise UserError(f"{what}: pretrained=true and --checkpoint both give weights; "
                        "drop one of them.")
    return checkpoint is None and kwargs.get("pretrained", True)


def check_vit(name: str, kwargs: dict, checkpoint: str | None, what: str) -> None:
    """What can be known before timm is imported: the hub is reachable (or has the weights
    cached) when they are wanted. The name and kwargs are checked by timm at load."""
    if wants_hub_weights(kwargs, checkpoint, what):
        hub.require(f"timm/{name}", what, "pass --checkpoint FILE (a state dict), or use "
                    f"--model timm:{name}?pretrained=false for random weights", prefix=True)


def read_checkpoint(path: str) -> dict:
    import torch

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


def _detail(e: Exception) -> str:
    """The telling line of an exception's text (torch puts it second), shortened."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[1] if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{e.__class__.__name__}: {text[:200]}"


def create(name: str, kwargs: dict, what: str):
    """The architecture with random weights; a failure is the name's or the kwargs'."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # TypeError for a misspelled kwarg, ValueError, AssertionError...
        if isinstance(e, RuntimeError) and "Unknown model" in str(e):
            raise UserError(f"{what}: timm has no model {name!r}; see timm.list_models('*vit*').")
        args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        raise UserError(f"{what}: timm.create_model({name!r}{args}) failed ({_detail(e)}); "
                        "fix the ?key=value arguments.")


def changed_tensors(name: str, kwargs: dict, model) -> list[str]:
    """Tensor names that `kwargs` add to or remove from the architecture the hub
    weights were trained for (only `num_classes` kept): none when the weights fit."""
    import torch

    plain = {"num_classes": kwargs["num_classes"]}
    if plain == kwargs:
        return []
    with torch.device("meta"):
        reference = create(name, plain, f"timm:{name}")
    return sorted(set(model.state_dict()) ^ set(reference.state_dict()))


def with_hub_weights(name: str, kwargs: dict, model, what: str):
    """The model with timm's pretrained weights, or one sentence on why not."""
    import timm

    def no_fit(detail: str) -> UserError:
        return UserError(f"{what}: timm's pretrained weights for {name} cannot fit this changed "
                         f"architecture ({detail}); add pretrained=false for random weights, or "
                         "pass --checkpoint FILE of that architecture.")

    changed = changed_tensors(name, kwargs, model)
    if changed:
        raise no_fit(f"{len(changed)} tensors differ from {name}'s, e.g. {changed[0]}")
    try:
        with hub.downloads():
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:
        if isinstance(e, RuntimeError) and ("size mismatch" in str(e) or "state_dict" in str(e)):
            raise no_fit(_detail(e))
        raise UserError(f"{what}: could not get pretrained weights for {name!r} ({_detail(e)}); "
                        "offline, pass --checkpoint FILE, or add ?pretrained=false for random "
                        "weights.")


def load_vit(name: str, kwargs: dict, device, dtype, checkpoint: str | None,
             what: str | None = None) -> LoadedModel:
    """`what`: how the user named the model, for the messages (default timm:<name>)."""
    from .kinds import KINDS

    what = what or f"--model timm:{name}"
    hub_weights = wants_hub_weights(kwargs, checkpoint, what)
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    state = read_checkpoint(checkpoint) if checkpoint else None
    if state is not None and "head.weight" in state:
        kwargs = {"num_classes": state["head.weight"].shape[0], **kwargs}
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    model = create(name, kwargs, what)
    if hub_weights:
        model = with_hub_weights(name, kwargs, model, what)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise UserError(f"--checkpoint {checkpoint} does not fit {name} ({_detail(e)[:160]}); "
                            "give a state dict of that architecture.")
    model.to(device=device, dtype=dtype)
    arch = {"family": "timm", "name": name, "kwargs": kwargs}
    kind = KINDS["vit"]
    return LoadedModel("", kind, model, device, dtype, transform=kind.transform(model),
                       arch=arch)


def check_deit(_: str, checkpoint: str | None = None) -> str:
    check_vit(DEIT, DEIT_KWARGS, checkpoint, "--model deit")
    return ""


@register("deit", "vit", f"DeiT-S ({DEIT}, timm) with a {NUM_CLASSES}-class head",
          "--checkpoint FILE with a CIFAR-100 fine-tuned state dict (else ImageNet weights "
          "from the hub and an untrained head)",
          check=check_deit)
def deit(_: str, device, dtype, checkpoint=None) -> LoadedModel:
    return load_vit(DEIT, dict(DEIT_KWARGS), device, dtype, checkpoint, "--model deit")


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


def check_timm(spec: str, checkpoint: str | None = None) -> str:
    name, kwargs = parse_timm_spec(spec)
    check_vit(name, kwargs, checkpoint, f"--model timm:{spec}")
    return spec


@register("timm:", "vit", "any timm ViT: timm:<name>[?create_model kwargs]; "
          "?pretrained=false for random weights",
          "internet (or the local Hugging Face cache) for pretrained weights, --checkpoint "
          "FILE, or ?pretrained=false", check=check_timm)
def timm_any(spec: str, device, dtype, checkpoint=None) -> LoadedModel:
    name, kwargs = parse_timm_spec(spec)
    return load_vit(name, kwargs, device, dtype, checkpoint, f"--model timm:{spec}")
