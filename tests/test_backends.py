"""Serving backends: gemlite selection rules, per-layer fallback, clear errors."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from autoq.serve import backend as backends
from autoq.serve import gemlite
from autoq.quant.model import layer_config
from autoq.serve import BACKENDS, require_backend
from autoq.serve.backend import prepare_, served_by, servable
from autoq.serve.gemlite import problem as gemlite_problem
from autoq.cli import app
from autoq.errors import UserError
from autoq.quant.hqq import NBITS
from autoq.quant import LayerConfig
from autoq.quant.model import quantize_

CPU = torch.device("cpu")


@pytest.mark.parametrize("cfg, fin, fout", [
    (LayerConfig(4, 64), 2048, 2048),
    (LayerConfig(4, 128), 2048, 512),
    (LayerConfig(8, 64), 8192, 2048),
    (LayerConfig(2, 32), 2048, 8192),
    (LayerConfig(1, 64), 64, 64),
    (LayerConfig(4, None), 2048, 128256),   # null group: one group per row
    (LayerConfig(8, None), 384, 1152),
    (LayerConfig(4, 32), 32, 8),
])
def test_gemlite_serves(cfg, fin, fout):
    assert gemlite_problem(cfg, fin, fout) is None
    assert served_by(cfg, fin, fout, "gemlite") == "gemlite"


@pytest.mark.parametrize("cfg, fin, fout, why", [
    (LayerConfig(3, 64), 2048, 2048, "1/2/4/8-bit"),
    (LayerConfig(1.58, 64), 2048, 2048, "1/2/4/8-bit"),
    (LayerConfig(4, 8), 64, 64, "group_size >= 32"),
    (LayerConfig(4, 16), 64, 64, "group_size >= 32"),    # gemlite's GEMM: wrong values
    (LayerConfig(1, 32), 64, 64, "group_size >= 64 at 1 bits"),  # no batch-1 config
    (LayerConfig(8, 48), 48, 64, "in_features % 32"),
    (LayerConfig(4, None), 48, 64, "in_features % 32"),
    (LayerConfig(4, None), 16, 64, "group_size >= 32"),
    (LayerConfig(4, 64), 96, 64, "does not divide"),       # HQQ cannot quantize it at all
    (LayerConfig(4, 12), 96, 64, "multiple of 8"),
])
def test_gemlite_refuses(cfg, fin, fout, why):
    reason = gemlite_problem(cfg, fin, fout)
    assert reason is not None and why in reason
    assert served_by(cfg, fin, fout, "gemlite") == "hqq"


@settings(max_examples=300, deadline=None)
@given(nbits=st.sampled_from(NBITS), group=st.sampled_from([None, 8, 16, 24, 32, 64, 128, 256]),
       fin=st.integers(1, 64).map(lambda k: 8 * k), fout=st.integers(1, 64).map(lambda k: 8 * k))
def test_gemlite_rules_hold_whenever_it_serves(nbits, group, fin, fout):
    cfg = LayerConfig(nbits, group)
    if gemlite_problem(cfg, fin, fout) is None:
        g = group or fin
        assert cfg.problem(fin, fout) is None
        assert nbits in (1, 2, 4, 8) and g >= (64 if nbits == 1 else 32) and fin % g == 0 \
            and fin % 32 == 0
    else:  # a layer gemlite refuses stays on HQQ's torch backend
        assert served_by(cfg, fin, fout, "gemlite") == "hqq"
    assert served_by(cfg, fin, fout, "hqq") == "hqq"
    assert served_by(None, fin, fout, "gemlite") == "fp"


def test_a_gemlite_search_keeps_per_layer_the_options_gemlite_serves():
    from autoq.search.space import parse_space

    space = parse_space({"format": "autoq.space/1",
                         "options": [None, "8:64", "4:64", "4:128", "3:64", "2:32"],
                         "groups": [{"name": "all", "match": ".", "per_layer": True}]}, "s.yaml")
    shapes = {"a": (2048, 512), "b": (96, 64), "c": (64, 128)}
    got = {c.param: c.labels for c in space.bind(shapes, servable("gemlite"))[0]}
    assert got["a"] == ("fp", "8:64", "4:64", "4:128", "2:32")
    assert got["b"] == ("fp", "2:32")
    assert got["c"] == ("fp", "8:64", "4:64", "2:32")
    hqq = {c.param: c.labels for c in space.bind(shapes, servable("hqq"))[0]}
    assert "3:64" in hqq["a"] and "4:128" not in hqq["c"]
    assert servable("gemlite")(LayerConfig(4, 64), 2048, 512)
    assert not servable("gemlite")(LayerConfig(3, 64), 2048, 512)


# ---- availability ------------------------------------------------------------------
def test_require_backend_on_cpu():
    assert require_backend("auto", CPU) == "torch-int4"   # torch's int4 CPU kernels
    assert require_backend("hqq", CPU) == "hqq"
    with pytest.raises(UserError, match="needs a CUDA GPU.*--backend torch-int4"):
        require_backend("gemlite", CPU)
    with pytest.raises(UserError, match="not one of auto, hqq, gemlite, torch-int4"):
        require_backend("triton", CPU)


def test_require_backend_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "package_installed", lambda name: True)
    assert require_backend("auto", "cuda") == "gemlite"
    assert require_backend("gemlite", "cuda:0") == "gemlite"
    assert require_backend("hqq", "cuda") == "hqq"
    with pytest.raises(UserError, match="--backend torch-int4 needs a CPU.*--backend gemlite"):
        require_backend("torch-int4", "cuda")
    monkeypatch.setattr(backends, "package_installed", lambda name: False)
    assert require_backend("auto", "cuda") == "hqq"
    with pytest.raises(UserError, match="pip install 'gemlite==0.6.0.post2'"):
        require_backend("gemlite", "cuda")


# ---- conversion ----------------------------------------------------------------------
class Served(nn.Module):
    """Stands in for a gemlite layer on CPU: runs the HQQLinear it was made from."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


@pytest.fixture
def fake_gemlite(monkeypatch):
    monkeypatch.setitem(BACKENDS, "gemlite", dataclasses.replace(BACKENDS["gemlite"],
                                                                 convert=Served))


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(a=nn.Linear(64, 64), b=nn.Linear(64, 48),
                                     c=nn.Linear(48, 64), d=nn.Linear(64, 32))).eval()


PLAN = {"a": LayerConfig(4, 64), "b": LayerConfig(3, 32), "c": LayerConfig(4, 48), "d": None}


def test_prepare_converts_servable_layers_and_lists_the_rest(fake_gemlite):
    from hqq.core.quantize import HQQLinear

    model = small_model()
    qm = quantize_(model, PLAN, device=CPU, dtype=torch.float32)
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = model(x)
    info = prepare_(qm, "gemlite")
    assert info["backend"] == "gemlite" and info["served_layers"] == 1
    assert set(info["fallback"]) == {"b", "c"}
    assert "1/2/4/8-bit" in info["fallback"]["b"] and "in_features % 32" in info["fallback"]["c"]
    assert isinstance(model.a, backends.Served) and isinstance(model.a.kernel, Served)
    assert model.a.weight.shape == (64, 64)  # model code reading .weight still can
    assert isinstance(model.b, HQQLinear) and isinstance(model.c, HQQLinear)
    assert isinstance(model.d, nn.Linear)  # unquantized layers are not the backend's business
    with torch.no_grad():
        assert torch.equal(model(x), before)
    # the next trial re-assigns layers: the HQQLinear comes back, intact
    qm.apply(PLAN, device=CPU, dtype=torch.float32)
    assert isinstance(model.a, HQQLinear) and model.a.W_q is not None


def test_prepare_hqq_changes_nothing():
    model = small_model()
    qm = quantize_(model, PLAN, device=CPU, dtype=torch.float32)
    mods = dict(model.named_children())
    report = prepare_(qm, "hqq")
    assert {k: report[k] for k in ("backend", "served_layers", "fallback")} == \
        {"backend": "hqq", "served_layers": 0, "fallback": {}}
    assert dict(model.named_children()) == mods


def test_layer_config_reads_back_the_quantized_config():
    model = small_model()
    quantize_(model, {"a": LayerConfig(4, None), "b": LayerConfig(2, 32)}, device=CPU,
              dtype=torch.float32)
    assert layer_config(model.a) == LayerConfig(4, None)
    assert layer_config(model.b) == LayerConfig(2, 32)


def test_to_gemlite_calls_gemlite_without_destroying_the_layer(monkeypatch):
    calls = []

    class A16Wn:  # the gemlite.helper API autoq relies on (gemlite 0.6.0.post2)
        def __init__(self, device="cuda:0", dtype=None):
            calls.append(("init", device, dtype))

        def from_hqqlinear(self, hqq_layer, del_orig=True):
            calls.append(("from_hqqlinear", hqq_layer, del_orig))
            return "served"

    helper = types.ModuleType("gemlite.helper")
    helper.A16Wn = A16Wn
    monkeypatch.setitem(sys.modules, "gemlite", types.ModuleType("gemlite"))
    monkeypatch.setitem(sys.modules, "gemlite.helper", helper)
    model = small_model()
    quantize_(model, {"a": LayerConfig(4, 64)}, device=CPU, dtype=torch.float32)
    assert gemlite.convert(model.a) == "served"
    assert calls == [("init", "cpu", torch.float32), ("from_hqqlinear", model.a, False)]


# ---- wiring: Evaluator and CLI -------------------------------------------------------
def test_evaluator_stores_backend_and_fallback(monkeypatch, fake_gemlite, tiny_llama_dir,
                                               tiny_text_file):
    from autoq.pipeline import evaluator as evaluate

    monkeypatch.setattr(evaluate, "require_backend", lambda name, device: "gemlite")
    ev = evaluate.Evaluator(evaluate.EvalSettings(model=f"hf:{tiny_llama_dir}", data=str(tiny_text_file),
                                                  seq_len=32, limit=2, device="cpu",
                                                  backend="gemlite"))
    resolved = {n: (LayerConfig(3, 32) if "self_attn" in n else
                    LayerConfig(4, 32) if "mlp" in n else None) for n in ev.shapes}
    out = ev.run(resolved, speed=False)
    mlp = {n for n in ev.shapes if "mlp" in n}
    attn = {n for n in ev.shapes if "self_attn" in n}
    assert out["backend"] == "gemlite" and out["served_layers"] == len(mlp)
    assert set(out["fallback"]) == attn
    assert out["ppl"] > 1


def test_cli_gemlite_without_cuda_is_one_sentence_exit_2(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "--backend", "gemlite", "--device", "cpu", "--quiet"])
    assert r.exit_code == 2
    assert "--backend gemlite needs a CUDA GPU" in r.output and "Traceback" not in r.output
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "autoq.plan/1", "model": "smollm2", "layers": {}}))
    r = runner.invoke(app, ["apply", str(plan), "--out", str(tmp_path / "q"), "--backend",
                            "gemlite", "--device", "cpu", "--quiet"])
    assert r.exit_code == 2 and "needs a CUDA GPU" in r.output
    assert not (tmp_path / "q").exists()
    r = runner.invoke(app, ["eval", "--backend", "fast", "--device", "cpu", "--quiet"])
    assert r.exit_code == 2 and "not one of auto, hqq, gemlite, torch-int4" in r.output


def test_cli_eval_reports_the_backend(tiny_llama_dir, tiny_text_file):
    r = CliRunner().invoke(app, ["eval", "--model", f"hf:{tiny_llama_dir}", "--data",
                                 str(tiny_text_file), "--seq-len", "32", "--limit", "2",
                                 "--uniform", "4:32", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["backend"] == "torch-int4" and out["fallback"] == {}   # auto on a CPU
    assert out["served_layers"] == 14 and set(out["layers"].values()) == \
        {"int4: 4-bit codes in the int4 kernel"}
    r = CliRunner().invoke(app, ["eval", "--model", f"hf:{tiny_llama_dir}", "--data",
                                 str(tiny_text_file), "--seq-len", "32", "--limit", "2",
                                 "--uniform", "4:32", "--device", "cpu", "--json",
                                 "--backend", "hqq"])
    hqq = json.loads(r.stdout.strip().splitlines()[-1])
    assert hqq["backend"] == "hqq" and hqq["served_layers"] == 0
    assert hqq["ppl"] == out["ppl"]     # quality: the method's own fp32 arithmetic either way
    assert hqq["size_mib"] == out["size_mib"]
