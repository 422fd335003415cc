"""The Python API (issue 12): `autoq.load(DIR)` gives a ready transformers / timm model
and its processor; `autoq.quantize(model, plan)` quantizes a model the user loaded,
in place, and says what it did; `import autoq` stays light; the example runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import autoq
from autoq.models import saved
from autoq.cli import app
from autoq.errors import UserError
from autoq.models import load_model
from autoq.plan import FORMAT, Plan
from autoq.quant.size import measure

ROOT = Path(__file__).resolve().parents[1]
CPU, F32 = torch.device("cpu"), torch.float32
PLAN = {"layers": {"model.layers.0.mlp.down_proj": {"nbits": 8, "group_size": 64}},
        "default": {"nbits": 4, "group_size": 32}}


def installed(model) -> set[str]:
    """The names of a model's quantized linears (packed, or served by a backend)."""
    return {n for n, m in model.named_modules()
            if hasattr(m, "quant_method") or getattr(m, "served", False)}


def applied(tmp_path: Path, spec: str, layers: dict, default=None, *extra) -> Path:
    plan = {"format": FORMAT, "model": spec, "layers": layers, "metrics": {}}
    if default:
        plan["default"] = default
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "model"
    r = CliRunner().invoke(app, ["apply", str(tmp_path / "plan.json"), "--out", str(out),
                                 "-q", *map(str, extra)])
    assert r.exit_code == 0, r.output
    return out


def test_import_autoq_is_light():
    code = "import sys, autoq; print(sorted(m for m in ('torch', 'transformers', 'timm', 'hqq') " \
           "if m in sys.modules)); print(callable(autoq.load), callable(autoq.quantize))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.split()
    assert out == ["[]", "True", "True"]


def test_quantize_in_place_reports_and_matches_autoq(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    mine = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=F32).eval()
    report = autoq.quantize(mine, PLAN, backend="hqq")
    # the same plan through autoq's own loader and QuantizedModel.apply
    ref = load_model(f"hf:{tiny_llama_dir}")
    resolved = Plan.from_json({"format": FORMAT, "model": ref.spec, **PLAN}).resolve(
        ref.shapes(), ref.keep())
    ref.quantized.apply(resolved, device=CPU, dtype=F32)
    ids = torch.arange(3, 30)[None]
    with torch.no_grad():
        assert torch.equal(mine(ids).logits, ref.model(ids).logits)
    assert report["layers_quantized"] == 14 == len(installed(mine))  # the head and embedding kept
    size = measure(ref.quantized)
    assert (report["size_mib"], report["bits_per_weight"]) == (size.size_mib, size.bits_per_weight)
    assert report["coverage"]["quantized_layers"] == 14 and report["ties"] == []
    assert report["backend"] == "hqq" and report["fallback"] == {}
    assert report["size_mib"] < report["memory_mib"]  # fp32 in memory, 16-bit storage
    # a plan file and a Plan give the same; the dict form needs no format or model
    path = tmp_path / "p.json"
    Plan.from_json({"format": FORMAT, "model": "anything", **PLAN}).save(path)
    again = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=F32).eval()
    served = autoq.quantize(again, path)   # auto on a CPU: torch's int4 kernels, bf16 inside
    assert served["size_mib"] == report["size_mib"] and served["backend"] == "torch-int4"
    assert served["served_layers"] == 14   # 4:32 repacked: 4 bits + bf16 scale/zero per 32
    with torch.no_grad():
        want = mine(ids).logits
        assert (again(ids).logits - want).abs().max() < 0.02 * want.abs().max()


def test_quantize_names_a_bad_layer_in_one_sentence(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=F32)
    with pytest.raises(UserError, match=r"layers\['model.layers.0.mlp.down'\] is not a "
                                        r"quantizable layer"):
        autoq.quantize(model, {"layers": {"model.layers.0.mlp.down": {"nbits": 4,
                                                                      "group_size": 32}}})
    with pytest.raises(UserError, match="give a plan file path"):
        autoq.quantize(model, 42)
    assert not installed(model)


def test_quantize_a_timm_model_keeps_its_head(tiny_vit_checkpoint):
    import timm

    from autoq.models.vit import parse_timm_spec

    spec, _ = tiny_vit_checkpoint
    name, kwargs = parse_timm_spec(spec)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    report = autoq.quantize(model, {"default": {"nbits": 8, "group_size": 32}})
    assert report["layers_quantized"] == 8 and "head" not in installed(model)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_load_gives_a_transformers_model_and_its_tokenizer(tiny_llama_dir, tmp_path):
    from transformers import PreTrainedModel

    out = applied(tmp_path, f"hf:{tiny_llama_dir}", {}, {"nbits": 4, "group_size": 32})
    model, tokenizer = autoq.load(out)   # a CPU: torch's int4 kernels, a bf16 model
    assert isinstance(model, PreTrainedModel) and not model.training
    assert len(installed(model)) == 14 and model.device.type == "cpu"
    assert model.dtype == torch.bfloat16
    inputs = tokenizer("the city of the", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert generated.shape == (1, inputs.input_ids.shape[1] + 6)
    ref = saved.load(out, CPU, F32)
    loaded = autoq.load(out, device="cpu", backend="hqq", dtype="fp32")
    assert loaded.processor is not None and loaded.model is not model
    with torch.no_grad():
        want = ref.model(inputs.input_ids).logits
        assert torch.equal(loaded.model(inputs.input_ids).logits, want)
        got = model(inputs.input_ids).logits.float()
        assert (got - want).abs().max() < 0.05 * want.abs().max()   # bf16 end to end


def test_load_a_vit_gives_the_model_and_its_transform(tiny_vit_checkpoint, tmp_path):
    from PIL import Image

    spec, ckpt = tiny_vit_checkpoint
    out = applied(tmp_path, f"timm:{spec}", {}, {"nbits": 8, "group_size": 32},
                  "--checkpoint", ckpt)
    model, transform = autoq.load(out)
    x = transform(Image.new("RGB", (40, 30), "white"))
    assert x.shape == (3, 32, 32) and model(x[None]).shape == (1, 100)


def test_the_example_loads_and_generates(tiny_bpe_llama_dir, tmp_path):
    out = applied(tmp_path, f"hf:{tiny_bpe_llama_dir}", PLAN["layers"], PLAN["default"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "load_and_generate.py"), str(out),
                        "the city of"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    model, tokenizer = autoq.load(out)
    ids = tokenizer("the city of", return_tensors="pt").input_ids
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                          do_sample=False)
    assert r.stdout.strip() == tokenizer.decode(want[0, ids.shape[1]:],
                                                skip_special_tokens=True).strip()
