"""Plan files: every validation error is one sentence naming the file and the field;
the CLI turns it into exit code 2 with no traceback and nothing written; plans
round-trip exactly."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from autoq.cli import app
from autoq.errors import UserError
from autoq.plan import FORMAT, Plan, uniform_plan
from autoq.quant import METHODS
from autoq.quant import LayerConfig

# (in_features, out_features) like a tiny model's: a 64-wide block and a 100-way head
SHAPES = {"blocks.0.attn.qkv": (64, 192), "blocks.0.mlp.fc2": (256, 64), "head": (64, 100)}
HEADS = {"head"}


def write_plan(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def plan_obj(layers, **extra):
    return {"format": FORMAT, "model": "m", "layers": layers, **extra}


# (plan JSON or text, words the one-sentence message must contain besides the file name)
BAD_PLANS = {
    "bad json": ('{"format": "autoq.plan/1", "model": ', ["not valid JSON", "line 1"]),
    "not an object": ("[1, 2]", ["JSON object"]),
    "missing layers": ({"format": FORMAT, "model": "m"}, ["missing field", "'layers'"]),
    "missing model": ({"format": FORMAT, "layers": {}}, ["missing field", "'model'"]),
    "wrong format": ({"format": "autoq.plan/0", "model": "m", "layers": {}}, ["format"]),
    "layers not a dict": ({"format": FORMAT, "model": "m", "layers": [1]}, ["layers"]),
    "layer not a dict": (plan_obj({"head": 4}), ["layers['head']", "nbits"]),
    "missing nbits": (plan_obj({"head": {"group_size": 64}}), ["layers['head']", "'nbits'"]),
    "missing group_size": (plan_obj({"head": {"nbits": 4}}), ["layers['head']", "'group_size'"]),
    "unknown key": (plan_obj({"head": {"nbits": 4, "group_size": 64, "axis": 0}}),
                    ["layers['head']", "unknown key 'axis'"]),
    "bad nbits": (plan_obj({"head": {"nbits": 5, "group_size": 64}}),
                  ["layers['head'].nbits=5", "1.58"]),
    "bool nbits": (plan_obj({"head": {"nbits": True, "group_size": 64}}), ["nbits=True"]),
    "string nbits": (plan_obj({"head": {"nbits": "4", "group_size": 64}}), ["nbits='4'"]),
    "group not multiple of 8": (plan_obj({"head": {"nbits": 4, "group_size": 60}}),
                                ["layers['head'].group_size=60", "multiple of 8"]),
    "negative group": (plan_obj({"head": {"nbits": 4, "group_size": -64}}), ["group_size=-64"]),
    "bad default": (plan_obj({}, default={"nbits": 4, "group_size": 12}),
                    ["default.group_size=12"]),
    "metrics not a dict": (plan_obj({}, metrics=[1]), ["metrics"]),
}

# valid JSON, but wrong for the model's layers (found by resolve)
BAD_FOR_MODEL = {
    "unknown layer": (plan_obj({"blocks.9.attn.qkv": {"nbits": 4, "group_size": 64}}),
                      ["layers['blocks.9.attn.qkv']", "not a quantizable layer", "'blocks.0.attn.qkv'"]),
    "group does not divide": (plan_obj({"blocks.0.mlp.fc2": {"nbits": 4, "group_size": 48}}),
                              ["layers['blocks.0.mlp.fc2']", "group_size=48",
                               "does not divide in_features=256", "valid: "]),
    "default does not divide": (plan_obj({}, default={"nbits": 4, "group_size": 128}),
                                ["default (applied to 'blocks.0.attn.qkv')", "group_size=128"]),
    # 1-bit packs 8 groups per byte: 64x100 at g64 has 100 groups, not a multiple of 8
    "packing group count": (plan_obj({"head": {"nbits": 1, "group_size": 64}}),
                            ["layers['head']", "1-bit packing", "(100)", "multiple of 8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_plan_load_errors_name_file_and_field(tmp_path, case):
    obj, words = BAD_PLANS[case]
    path = write_plan(tmp_path / "my plan.json", obj)
    with pytest.raises(UserError) as err:
        Plan.load(path)
    message = str(err.value)
    assert message.startswith(path)
    for word in words:
        assert word in message
    assert "\n" not in message


@pytest.mark.parametrize("case", sorted(BAD_FOR_MODEL))
def test_plan_resolve_errors_name_file_and_field(tmp_path, case):
    obj, words = BAD_FOR_MODEL[case]
    path = write_plan(tmp_path / "p.json", obj)
    plan = Plan.load(path)  # valid on its own
    with pytest.raises(UserError) as err:
        plan.resolve(SHAPES, HEADS, path)
    message = str(err.value)
    assert message.startswith(path)
    for word in words:
        assert word in message


def test_missing_plan_file(tmp_path):
    with pytest.raises(UserError, match="no such plan file"):
        Plan.load(tmp_path / "nope.json")


def test_packing_constraint_matches_hqq():
    """Every config `problem` accepts really quantizes with HQQ, and 1-bit on 100 groups
    (which it rejects) is what HQQ's packing cannot do."""
    import torch

    def quantize_linear(lin, cfg, device, dtype):
        return cfg.quant.quantize(lin.weight.data, None, cfg, device, dtype)

    lin = torch.nn.Linear(64, 100, bias=False)
    for nbits, ok in ((1, False), (2, True), (4, True), (8, True), (3, True), (1.58, True)):
        cfg = LayerConfig(nbits, 64)
        assert (cfg.problem(64, 100) is None) == ok
        if ok:
            layer = quantize_linear(lin, cfg, torch.device("cpu"), torch.float32)
            assert layer.dequantize().shape == (100, 64)
    with pytest.raises(Exception):  # HQQ itself breaks on it (hence the plan error)
        quantize_linear(lin, LayerConfig(1, 64), torch.device("cpu"), torch.float32).dequantize()


def test_resolve_default_skips_head_and_null_keeps():
    plan = Plan("m", {"blocks.0.attn.qkv": None}, default=LayerConfig(4, 64))
    resolved = plan.resolve(SHAPES, HEADS)
    assert resolved == {"blocks.0.attn.qkv": None, "blocks.0.mlp.fc2": LayerConfig(4, 64),
                        "head": None}
    no_default = Plan("m", {"head": LayerConfig(8, None)}).resolve(SHAPES, HEADS)
    assert no_default == {"blocks.0.attn.qkv": None, "blocks.0.mlp.fc2": None,
                          "head": LayerConfig(8, None)}


def test_uniform_plan_leaves_head():
    plan = uniform_plan("m", LayerConfig(4, 64), SHAPES, HEADS)
    assert plan.layers == {"blocks.0.attn.qkv": LayerConfig(4, 64),
                           "blocks.0.mlp.fc2": LayerConfig(4, 64), "head": None}


@pytest.mark.parametrize("text,cfg", [("4:64", LayerConfig(4, 64)), ("1.58:16", LayerConfig(1.58, 16)),
                                      ("8:row", LayerConfig(8, None))])
def test_uniform_flag_parses(text, cfg):
    assert LayerConfig.parse(text) == cfg


@pytest.mark.parametrize("text", ["4", "4:x", "5:64", "four:64"])
def test_uniform_flag_errors(text):
    with pytest.raises(UserError, match="--uniform"):
        LayerConfig.parse(text)


def test_plans_round_trip_exactly(tmp_path):
    text = json.dumps({
        "format": FORMAT, "model": "hf:/some/dir", "method": "hqq",
        "methods": {"hqq": METHODS.get("hqq").version()},
        "layers": {"blocks.0.attn.qkv": {"nbits": 1.58, "group_size": 16},
                   "blocks.0.mlp.fc2": None, "head": {"nbits": 8, "group_size": None}},
        "default": {"nbits": 4, "group_size": 64},
        "metrics": {"ppl": 31.25, "bits_per_weight": 5.1, "size_mib": 180.2},
        "study": {"name": "s1", "trial": 17}}, indent=2) + "\n"
    src = tmp_path / "a.json"
    src.write_text(text)
    plan = Plan.load(src)
    plan.save(tmp_path / "b.json")
    assert (tmp_path / "b.json").read_text() == text
    assert Plan.load(tmp_path / "b.json") == plan


# ---- the CLI: exit code 2, one sentence, no traceback, nothing written ---------------

@pytest.mark.parametrize("case", ["bad json", "missing layers", "unknown key", "bad nbits",
                                  "group not multiple of 8"])
def test_cli_bad_plan_file(tmp_path, case):
    obj, words = BAD_PLANS[case]
    path = write_plan(tmp_path / "plan.json", obj)
    out = tmp_path / "out"
    for args in (["apply", path, "--out", str(out)], ["eval", "--plan", path]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}")
        assert all(word in lines[0] for word in words)
        assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.parametrize("case", ["unknown layer", "group does not divide"])
def test_cli_plan_wrong_for_model(tmp_path, tiny_llama_dir, case):
    layer = {"unknown layer": "model.layers.7.mlp.up_proj",
             "group does not divide": "model.layers.0.mlp.down_proj"}[case]
    obj = {"format": FORMAT, "model": f"hf:{tiny_llama_dir}",
           "layers": {layer: {"nbits": 4, "group_size": 48}}}
    path = write_plan(tmp_path / "plan.json", obj)
    result = CliRunner().invoke(app, ["apply", path, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"error: {path}: layers['{layer}']" in result.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
