"""What other tools read from a saved folder (issue 12): a clean config.json; autoq.json
says whether hqq's own loader can rebuild it, and that holds (a linear-only Llama
loads with identical logits; Falcon's nn.Linear subclass and quantized embeddings
do not); `autoq export` writes a GGUF that transformers' `gguf_file=` loads with
the same logits (exactly for the layers Q4_1 holds, closely for re-quantized ones)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autoq.quant import hqq as hqq_method
from autoq.serve import gguf as export_gguf
from autoq.models import saved
from autoq.cli import app
from autoq.errors import UserError
from autoq.models import load_model
from autoq.plan import FORMAT, Plan
from families import make_lm

CPU, F32 = torch.device("cpu"), torch.float32
HQQ = hqq_method.LOADER


def export(folder, out):
    """`autoq export`: the saved folder, loaded on CPU, written as GGUF."""
    return export_gguf.export(saved.load(folder, CPU, F32), out, folder.name)


def layer_cfg_affine(layer):
    from autoq.quant import method_of

    return method_of(layer).affine(layer)
EMB, HEAD = "model.embed_tokens", "lm_head"


def apply(tmp_path: Path, spec: str, layers: dict, default=None, name="model") -> Path:
    plan = {"format": FORMAT, "model": spec, "layers": layers, "metrics": {}}
    if default:
        plan["default"] = default
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(plan))
    r = CliRunner().invoke(app, ["apply", str(path), "--out", str(tmp_path / name), "-q"])
    assert r.exit_code == 0, r.output
    return tmp_path / name


def loaders(folder: Path) -> dict:
    return json.loads((folder / "autoq.json").read_text())["loaders"]


def hqq_load(folder: Path):
    from hqq.models.hf.base import AutoHQQHFModel

    return AutoHQQHFModel.from_quantized(str(folder), device="cpu", compute_dtype=F32)


def test_config_json_is_the_architecture_without_a_stale_quantization_config(tiny_llama_dir,
                                                                              tmp_path):
    loaded = load_model(f"hf:{tiny_llama_dir}")
    loaded.model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    resolved = Plan(loaded.spec, {}).resolve(loaded.shapes(), loaded.keep())
    out = saved.save(loaded, Plan(loaded.spec, resolved), tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "float16"  # what the unquantized tensors are stored in
    assert (out / "generation_config.json").exists()
    assert loaded.model.config.quantization_config  # the model itself is left as it was


def test_hqq_loader_reads_a_linear_only_folder_as_autoq_json_says(tiny_llama_dir, tmp_path):
    out = apply(tmp_path, f"hf:{tiny_llama_dir}", {HEAD: {"nbits": 8, "group_size": 64}},
                {"nbits": 4, "group_size": 32})
    assert loaders(out) == {saved.AUTOQ_LOADER: "yes", HQQ: "yes"}
    ids = torch.arange(4, 40)[None]
    with torch.inference_mode():
        assert torch.equal(hqq_load(out)(ids).logits,
                           saved.load(out, CPU, F32).model(ids).logits)


def test_hqq_loader_cannot_read_falcon_nor_quantized_embeddings_and_autoq_json_says_why(
        tiny_llama_dir, tmp_path):
    falcon = make_lm("falcon", tmp_path / "falcon")
    out = apply(tmp_path, f"hf:{falcon}", {}, {"nbits": 4, "group_size": 32}, "f")
    assert loaders(out)[HQQ] == (
        "no: transformer.h.0.self_attention.query_key_value is a FalconLinear, not exactly "
        "nn.Linear: it loads such a layer in its first pass and then fails on it with "
        "\"'HQQLinear' object has no attribute 'name'\"")
    with pytest.raises(AttributeError, match="'HQQLinear' object has no attribute 'name'"):
        hqq_load(out)
    assert saved.load(out, CPU, F32).model(torch.arange(3, 9)[None]).logits.isfinite().all()
    emb = apply(tmp_path, f"hf:{tiny_llama_dir}", {EMB: {"nbits": 4, "group_size": 32},
                                                   HEAD: {"nbits": 4, "group_size": 32}},
                name="e")
    assert loaders(emb)[HQQ].startswith("no: model.embed_tokens is a quantized embedding")


EXACT = {EMB: {"nbits": 4, "group_size": 32}, HEAD: {"nbits": 4, "group_size": 32},
         "model.layers.0.self_attn.q_proj": {"nbits": 4, "group_size": 64},
         "model.layers.0.self_attn.k_proj": {"nbits": 2, "group_size": 32},
         "model.layers.1.self_attn.v_proj": {"nbits": 3, "group_size": 64},
         "model.layers.1.mlp.down_proj": {"nbits": 1, "group_size": 64},
         "model.layers.1.self_attn.o_proj": None}
REQUANT = {"model.layers.0.mlp.down_proj": {"nbits": 8, "group_size": 64},
           "model.layers.1.mlp.up_proj": {"nbits": 4, "group_size": 16}}
UNTIED = {EMB: {"nbits": 8, "group_size": 64}, HEAD: {"nbits": 4, "group_size": 32}}


@pytest.mark.parametrize("layers,how,tol", [
    (EXACT, {"exact": 14, "float": 6}, 1e-3),  # m = -zero * scale rounded to fp16
    ({**EXACT, **REQUANT}, {"exact": 12, "requantized": 2, "float": 6}, 2e-2),
    (UNTIED, {"exact": 15, "requantized": 1, "float": 5}, 2e-2),
], ids=["exact", "requantized", "untied"])
def test_gguf_export_loads_in_transformers_with_the_same_logits(tiny_bpe_llama_dir, tmp_path,
                                                                 layers, how, tol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = apply(tmp_path, f"hf:{tiny_bpe_llama_dir}", layers, {"nbits": 4, "group_size": 64})
    r = CliRunner().invoke(app, ["export", str(folder), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["out"] == str(tmp_path / "model.gguf") and report["how"] == how
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", dtype=F32)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    ours = saved.load(folder, CPU, F32)
    text = "the city of the national university was known for its school"
    ids = ours.tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(tokenizer(text, return_tensors="pt").input_ids, ids)
    with torch.inference_mode():
        a, b = theirs(ids).logits, ours.model(ids).logits
    assert (a - b).abs().max() <= tol * b.abs().max()
    assert ("output.weight" in gguf_names(tmp_path / "model.gguf")) == (layers is UNTIED)
    again = CliRunner().invoke(app, ["export", str(folder)])
    assert again.exit_code == 2 and "exists; pick a new file or pass --force" in again.output


def gguf_names(path: Path) -> set[str]:
    from gguf import GGUFReader

    return {t.name for t in GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("nbits,group", [(4, 32), (4, 64), (4, None), (3, 64), (2, 32),
                                         (1.58, 32), (1, 64)])
def test_q4_1_blocks_hold_hqq_layers_up_to_fp16_rounding(nbits, group):
    from gguf import GGMLQuantizationType, quants

    from autoq.quant import LayerConfig

    torch.manual_seed(0)
    cfg = LayerConfig(nbits, group)
    layer = cfg.quant.quantize(torch.randn(48, 128), None, cfg, CPU, F32)
    assert export_gguf.exact_in_q4_1(layer)
    a = layer_cfg_affine(layer)
    blocks = export_gguf.q4_1_blocks(a.codes, a.scale, a.zero, a.group)
    back = torch.from_numpy(quants.dequantize(blocks, GGMLQuantizationType.Q4_1))
    want = layer.dequantize()
    assert back.shape == want.shape == (48, 128)
    assert (back - want).abs().max() <= 2**-10 * want.abs().max()


def test_gguf_export_refuses_what_it_cannot_write(tiny_llama_dir, tmp_path):
    word_level = apply(tmp_path, f"hf:{tiny_llama_dir}", {}, {"nbits": 4, "group_size": 32})
    with pytest.raises(UserError, match="byte-level BPE tokenizers"):
        export(word_level, tmp_path / "x.gguf")
    gpt2 = apply(tmp_path, f"hf:{make_lm('gpt2', tmp_path / 'gpt2')}", {},
                 {"nbits": 4, "group_size": 32}, "g")
    with pytest.raises(UserError, match="GGUF export supports LlamaForCausalLM, not "
                                        "GPT2LMHeadModel"):
        export(gpt2, tmp_path / "g.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


LLAMA_GREEDY = os.environ.get("AUTOQ_LLAMA_GREEDY")


@pytest.mark.skipif(not LLAMA_GREEDY, reason="llama.cpp not built: run scripts/build_llama_cpp.sh "
                    "and set AUTOQ_LLAMA_GREEDY to the llama_cpp_greedy it prints")
def test_llama_cpp_runs_the_export_and_decodes_the_same_greedy_tokens(tiny_bpe_llama_dir,
                                                                       tmp_path):
    folder = apply(tmp_path, f"hf:{tiny_bpe_llama_dir}", EXACT, {"nbits": 4, "group_size": 64})
    gguf = tmp_path / "model.gguf"
    export(folder, gguf)
    text = "the city of the national university"
    r = subprocess.run([LLAMA_GREEDY, str(gguf), "8", text], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    ours = saved.load(folder, CPU, F32)
    ids = ours.tokenizer(text, return_tensors="pt").input_ids
    assert [int(t) for t in lines["prompt"].split()] == ids[0].tolist()
    want = ours.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                               do_sample=False)[0, ids.shape[1]:].tolist()
    assert [int(t) for t in lines["new"].split()] == want
