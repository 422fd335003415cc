"""timm loading on tiny architectures, without the hub: the real error text of
`timm.create_model`, random weights with `?pretrained=false`, tuple kwargs, random
weights under `--checkpoint`, and a plain sentence when hub weights cannot fit."""

from __future__ import annotations

import pytest
import timm
import timm.models._builder as builder
import torch

from autoq.errors import UserError
from autoq.models import load_model
from autoq.models.vit import parse_timm_spec

VIT_SPEC = "vit_tiny_patch16_224?depth=2&img_size=32&patch_size=8&embed_dim=64&num_heads=2"

SWIN = ("swin_tiny_patch4_window7_224?depths=1,1,1,1&num_heads=1,1,1,1&embed_dim=16"
        "&img_size=32&patch_size=2&window_size=1")


@pytest.fixture
def no_hub(monkeypatch):
    """timm's pretrained loading fails the test if it is reached."""
    monkeypatch.setattr(builder, "load_pretrained",
                        lambda *a, **k: pytest.fail("pretrained weights were requested"))


def test_commas_make_tuples():
    name, kwargs = parse_timm_spec(SWIN)
    assert name == "swin_tiny_patch4_window7_224"
    assert kwargs["depths"] == (1, 1, 1, 1) and kwargs["num_heads"] == (1, 1, 1, 1)
    assert kwargs["embed_dim"] == 16 and parse_timm_spec("x?t=1,")[1]["t"] == (1,)


def test_pretrained_false_builds_random_weights_with_tuple_kwargs(no_hub):
    loaded = load_model(f"timm:{SWIN}&pretrained=false")
    assert [len(stage.blocks) for stage in loaded.model.layers] == [1, 1, 1, 1]
    assert "pretrained" not in loaded.arch["kwargs"] and loaded.arch["kwargs"]["depths"] == (1,) * 4
    with torch.inference_mode():
        assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


def test_a_misspelled_kwarg_reports_timms_own_text(no_hub):
    with pytest.raises(UserError, match=r"failed \(TypeError: .*unexpected keyword argument "
                                        r"'dept'\); fix the \?key=value arguments\."):
        load_model(f"timm:{VIT_SPEC}&dept=3&pretrained=false")
    with pytest.raises(UserError, match="timm has no model 'vit_nosuch'"):
        load_model("timm:vit_nosuch?pretrained=false")
    with pytest.raises(UserError, match="pretrained='maybe' must be true or false"):
        load_model(f"timm:{VIT_SPEC}&pretrained=maybe")


def test_a_checkpoint_means_random_weights_then_the_state_dict(no_hub, tiny_vit_checkpoint):
    spec, path = tiny_vit_checkpoint
    loaded = load_model(f"timm:{spec}", checkpoint=str(path))
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(UserError, match="pretrained=true and --checkpoint both give weights"):
        load_model(f"timm:{spec}&pretrained=true", checkpoint=str(path))


def test_hub_weights_cannot_fit_a_shrunk_architecture(no_hub):
    """depth=2 removes blocks the pretrained weights have: refused before any download."""
    with pytest.raises(UserError) as e:
        load_model("timm:vit_tiny_patch16_224?depth=2&img_size=32")
    assert "timm's pretrained weights for vit_tiny_patch16_224 cannot fit this changed " \
        "architecture (120 tensors differ from vit_tiny_patch16_224's, e.g. blocks.10." in str(e.value)
    assert "pretrained=false" in str(e.value) and "--checkpoint" in str(e.value)


def test_hub_weights_of_other_shapes_are_refused_with_torchs_reason(monkeypatch):
    """Same tensors, other widths (embed_dim): torch's size mismatch, said plainly."""
    full = timm.create_model("vit_tiny_patch16_224", num_classes=100).state_dict()

    def hub_weights(model, *a, **k):  # what timm does with the downloaded state dict
        model.load_state_dict(full, strict=False)

    monkeypatch.setattr(builder, "load_pretrained", hub_weights)
    with pytest.raises(UserError, match=r"cannot fit this changed architecture \(RuntimeError: "
                                        r"size mismatch for"):
        load_model("timm:vit_tiny_patch16_224?embed_dim=96&num_heads=2")


def test_a_failed_download_reports_the_real_error(monkeypatch):
    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(UserError, match=r"could not get pretrained weights for "
                                        r"'vit_tiny_patch16_224' \(OSError: We couldn't connect"):
        load_model("timm:vit_tiny_patch16_224?img_size=32")

