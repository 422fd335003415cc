"""Latency model (arithmetic, micro-benchmarks, cache) and the decode engines (the GPU check
that measures them on a GPU: tests/test_gpu_check.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from autoq.serve import calibrate, latency, speed
from autoq.serve.latency import LatencyModel, bench_layer, layer_key, timing_layer
from autoq.models import LoadedModel, load_model
from autoq.models.kinds import KINDS
from autoq.quant import LayerConfig

CPU = torch.device("cpu")
Q4, Q3 = LayerConfig(4, 64), LayerConfig(3, 64)
SHAPES = {"a": (64, 64), "b": (64, 128), "head": (64, 256)}


def table(backend: str) -> dict:
    """Hand-made times: fp 1, 4-bit 2, 3-bit 5 (x the layer's out/64), in ms."""
    t = {}
    for fin, fout in SHAPES.values():
        unit = fout / 64 * 1e-3
        t[layer_key(fin, fout, None, "fp", (1, 1))] = 1 * unit
        t[layer_key(fin, fout, Q4, backend, (1, 1))] = 2 * unit
        t[layer_key(fin, fout, Q3, "hqq", (1, 1))] = 5 * unit
    return t


def test_predict_is_rest_plus_the_layers():
    lat = LatencyModel(table("hqq"), rest={"fp": 0.010}, shapes=SHAPES, backend="hqq")
    assert lat.predict({}) == pytest.approx(0.010 + (1 + 2 + 4) * 1e-3)
    plan = {"a": Q4, "b": Q3, "head": None}
    assert lat.predict(plan) == pytest.approx(0.010 + 2e-3 + 5 * 2e-3 + 4e-3)
    assert lat.tokens_per_s(plan) == pytest.approx(1 / lat.predict(plan))


def test_predict_uses_the_serving_backend_per_layer():
    lat = LatencyModel(table("gemlite"), rest={"fp": 0.0}, shapes=SHAPES, backend="gemlite")
    # 4-bit is served by gemlite, 3-bit falls back to the hqq entry
    assert lat.predict({"a": Q4, "b": Q3}) == pytest.approx(2e-3 + 10e-3 + 4e-3)
    hqq_only = LatencyModel(table("gemlite"), {"fp": 0.0}, SHAPES, backend="hqq")
    with pytest.raises(KeyError, match="4:64"):
        hqq_only.predict({"a": Q4})  # only gemlite timings of 4:64 were measured


def test_rest_measured_per_option_is_weighted_by_the_plans_weights():
    lat = LatencyModel(table("hqq"), {"fp": 0.010, "4:64": 0.004, "3:64": 0.001}, SHAPES)
    assert lat.rest_time({}) == pytest.approx(0.010)
    assert lat.rest_time({n: Q4 for n in SHAPES}) == pytest.approx(0.004)
    w = {n: fin * fout for n, (fin, fout) in SHAPES.items()}  # a: 1/7, b: 2/7, head: 4/7
    plan = {"a": Q4, "head": Q3}
    assert lat.rest_time(plan) == pytest.approx(
        (w["a"] * 0.004 + w["b"] * 0.010 + w["head"] * 0.001) / sum(w.values()))
    assert lat.predict(plan) == pytest.approx(lat.rest_time(plan) + sum(
        lat.layer_time(n, plan.get(n)) for n in SHAPES))
    with pytest.raises(KeyError, match="rest term"):
        lat.rest_time({"a": LayerConfig(2, 64)})


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(SHAPES)), st.sampled_from([None, Q4, Q3])),
       st.sampled_from(sorted(SHAPES)), st.sampled_from([None, Q4, Q3]))
def test_changing_one_layer_changes_the_prediction_by_its_time_difference(plan, name, cfg):
    lat = LatencyModel(table("hqq"), {"fp": 0.003}, SHAPES)
    other = {**plan, name: cfg}
    diff = lat.layer_time(name, cfg) - lat.layer_time(name, plan.get(name))
    assert lat.predict(other) - lat.predict(plan) == pytest.approx(diff, abs=1e-12)


def test_timing_layer_builds_the_served_module():
    from hqq.core.quantize import HQQLinear

    fp = timing_layer(64, 32, None, "fp", CPU, torch.float32)
    q = timing_layer(64, 32, Q4, "hqq", CPU, torch.float32)
    assert isinstance(fp, nn.Linear) and fp.weight.shape == (32, 64)
    assert isinstance(q, HQQLinear) and q.meta["nbits"] == 4 and q.meta["group_size"] == 64
    assert q.meta["scale"].dtype == torch.float16  # counted as 16-bit, like quantize_linear
    x = torch.randn(1, 1, 64)
    assert torch.allclose(q(x), fp(x), atol=0.5)  # same random weights, 4-bit close


def test_bench_layer_measures_on_cpu():
    for cfg, served in ((None, "fp"), (Q4, "hqq")):
        t = bench_layer(64, 32, cfg, served, CPU, torch.float32, (1, 1))
        assert math.isfinite(t) and t > 0
    assert bench_layer(64, 32, None, "fp", CPU, torch.float32, (2, 5)) > 0


def tiny_lm(tiny_llama_dir) -> LoadedModel:
    return load_model(f"hf:{tiny_llama_dir}", CPU, torch.float32)


FAST = {"new_tokens": 4, "repeats": 1}


def fake_in_model(calls: list, layer_s: float = 1e-4, decode_s: float = 1.0):
    """calibrate.in_model stand-in: every priced module `layer_s`, every decode `decode_s`."""
    def run(loaded, configs, backend, speed_kwargs, hooks=True, progress=None):
        configs = list(configs)
        calls.append((configs, hooks))
        names = [n for n, u in loaded.units().items() if u.type != "expert"] if hooks else []
        return {latency.label_of(c): calibrate.Timed(decode_s, {n: layer_s for n in names})
                for c in configs}
    return run


def test_for_model_times_each_option_inside_the_model_once_and_caches(tiny_llama_dir, tmp_path,
                                                                      monkeypatch):
    loaded = tiny_lm(tiny_llama_dir)
    shapes = loaded.shapes()
    opts = [LayerConfig(4, 32), LayerConfig(8, 128)]  # 8:128 fits only the 128-in layers
    calls = []
    monkeypatch.setattr(calibrate, "in_model", fake_in_model(calls, 1e-4, 1.0))
    monkeypatch.setattr(latency, "bench_layer", lambda *a, **k: pytest.fail("timed alone"))
    monkeypatch.setattr(latency, "bench_lookup", lambda *a, **k: pytest.fail("timed alone"))
    lat = LatencyModel.for_model(loaded, opts, "hqq", tmp_path, speed_kwargs=FAST)
    assert calls == [([None, *opts], True)]  # one decode run per option, fp first
    assert lat.mode.startswith("in-model:") and all(k.endswith(lat.mode) for k in lat.layer_seconds)
    assert set(lat.layer_seconds.values()) == {1e-4}
    # the embedding is priced as a lookup, not a matmul
    assert any(k.startswith("lookup:64x128|") for k in lat.layer_seconds)
    # each option's rest is its decode less its layers: a uniform plan predicts its decode
    assert set(lat.rest) == {"fp", "4:32", "8:128"}
    for cfg in (None, *opts):
        assert lat.predict(calibrate.uniform(shapes, cfg)) == pytest.approx(1.0)
    assert lat.rest["fp"] == pytest.approx(1.0 - 1e-4 * len(shapes))
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1
    key = json.loads(files[0].read_text())["key"]
    assert key["backend"] == "hqq" and key["dtype"] == "float32" and key["hqq"] != "none"

    # a second model of the same device reads everything from the file
    monkeypatch.setattr(calibrate, "in_model", lambda *a, **k: pytest.fail("re-measured"))
    again = LatencyModel.for_model(loaded, opts, "hqq", tmp_path, speed_kwargs=FAST)
    assert again.layer_seconds == lat.layer_seconds and again.rest == lat.rest

    # a broken cache file is measured again, never trusted
    files[0].write_text("{not json")
    monkeypatch.setattr(calibrate, "in_model", fake_in_model(calls, 2e-4, 0.5))
    fresh = LatencyModel.for_model(loaded, opts, "hqq", tmp_path, speed_kwargs=FAST)
    assert set(fresh.layer_seconds.values()) == {2e-4}
    assert fresh.predict({}) == pytest.approx(0.5)


def test_in_model_timing_leaves_the_model_with_its_plan_and_serving(tiny_llama_dir):
    loaded = tiny_lm(tiny_llama_dir)
    shapes = loaded.shapes()
    q = LayerConfig(4, 32)
    plan = {n: q for n in shapes}
    from autoq import pipeline

    pipeline.quantize(loaded, plan)
    served = pipeline.serve(loaded, "torch-int4")
    modules = {n: loaded.model.get_submodule(n) for n in shapes}
    cache = loaded.quantized.cache
    timed = calibrate.in_model(loaded, [None, LayerConfig(8, 32)], "torch-int4", FAST)
    assert set(timed) == {"fp", "8:32"}
    for t in timed.values():
        assert t.decode > 0 and set(t.layers) == set(shapes)  # every module, decode calls only
        assert all(0 < s < t.decode for s in t.layers.values())
    assert loaded.quantized.applied == plan and loaded.quantized.serving == served
    assert loaded.quantized.cache is cache  # the timing layers' cache is not kept
    assert all(type(loaded.model.get_submodule(n)) is type(m) for n, m in modules.items())


def test_for_model_moe_experts_are_timed_alone(monkeypatch):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=4, num_experts_per_tok=2)
    loaded = LoadedModel("moe", KINDS["lm"], MixtralForCausalLM(config).eval(), CPU,
                         torch.float32, {"lm_head"})
    alone = []
    monkeypatch.setattr(latency, "bench_layer", lambda *a, **k: alone.append(a[:3]) or 1e-3)
    lat = LatencyModel.for_model(loaded, [LayerConfig(4, 32)], "hqq", None, speed_kwargs=FAST)
    experts = {s for n, s in loaded.shapes().items() if loaded.units()[n].type == "expert"}
    assert {(fi, fo) for fi, fo, _ in alone} == experts  # no module to hook: timed alone
    assert not experts & {s for n, s in loaded.shapes().items() if n in lat.shapes and
                          loaded.units()[n].type != "expert"}  # (shapes only experts have)
    assert lat.predict({}) > 0 and set(lat.rest) == {"fp", "4:32"}


def test_for_model_only_measures_the_pairs_a_plan_uses(tiny_llama_dir, monkeypatch):
    loaded = tiny_lm(tiny_llama_dir)
    shapes = loaded.shapes()
    q, other = LayerConfig(4, 32), LayerConfig(8, 32)
    first = next(n for n, u in loaded.units().items() if u.type == "linear")
    plan = {n: (q if n == first else None) for n in shapes}
    calls = []
    monkeypatch.setattr(calibrate, "in_model", fake_in_model(calls))
    lat = LatencyModel.for_model(loaded, [q, other], "hqq", None, only=plan)
    assert calls == [([None, q], True)]
    fin_fout = shapes[first]
    assert {k.split("|")[1] for k in lat.layer_seconds if k.startswith(
        f"{fin_fout[0]}x{fin_fout[1]}|")} == {"fp", "4:32"}
    assert lat.predict(plan) > 0
    with pytest.raises(KeyError):
        lat.predict({first: other})  # 8:32 was not in the plan: not measured


def test_for_model_vit_times_image_calls(tiny_vit_checkpoint, monkeypatch):
    spec, path = tiny_vit_checkpoint
    loaded = load_model(f"timm:{spec}", CPU, torch.float32, str(path))
    tokens = loaded.model.patch_embed.num_patches + loaded.model.num_prefix_tokens
    assert loaded.kind.serving_lead(loaded) == (1, tokens)
    monkeypatch.setattr(latency, "bench_layer", lambda *a, **k: pytest.fail("timed alone"))
    lat = LatencyModel.for_model(loaded, [LayerConfig(4, 32)], "hqq", None)
    assert lat.unit == "image" and lat.info["cache_file"] == ""
    assert all(f"|1x{tokens}|" in k for k in lat.layer_seconds)  # priced per image
    assert lat.predict({}) > 0


def test_timing_mode_follows_the_speed_engine():
    def fake(kind, device):
        return LoadedModel("x", KINDS[kind], nn.Identity(), torch.device(device), torch.float16)

    assert latency.timing_mode(fake("lm", "cpu")) == "in-model"
    assert latency.timing_mode(fake("lm", "cuda")) == "graph"  # the CUDA default: graphs
    assert latency.timing_mode(fake("lm", "cuda"), {"engine": "compiled"}) == "compiled"
    assert latency.timing_mode(fake("lm", "cuda"), {"engine": "static"}) == "stream"
    assert latency.timing_mode(fake("vit", "cuda")) == "stream"


# ---- decode engines ----------------------------------------------------------------
def lively_lm() -> LoadedModel:
    """A tiny random Llama whose greedy tokens are not all the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         initializer_range=0.3, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    return LoadedModel("tiny", KINDS["lm"], model, CPU, torch.float32, {"lm_head"})


def test_static_decoder_matches_generate():
    loaded = lively_lm()
    loaded.quantized.apply({n: LayerConfig(4, 32) for n in loaded.shapes()}, device=CPU, dtype=torch.float32)
    _, tokens = speed.StaticDecoder(loaded, 10, "eager").run()
    ids = speed.prompt_ids(loaded)
    with torch.inference_mode():
        ref = loaded.model.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                                    pad_token_id=0, attention_mask=torch.ones_like(ids))
    assert len(set(tokens[0].tolist())) > 1
    assert torch.equal(tokens, ref[:, ids.shape[1]:])


@pytest.mark.parametrize("cfg", [None, LayerConfig(4, 32), LayerConfig(3, 32)])
def test_a_decode_step_reads_nothing_back_to_the_host(cfg, monkeypatch):
    """What the `graphs` engine captures must not read a tensor's value in Python (on a
    GPU, a sync: CUDA-graph capture fails on it, or bakes the value in): the static
    cache keeps its position in a device tensor."""
    loaded = lively_lm()
    loaded.quantized.apply({n: cfg for n in loaded.shapes()}, device=CPU, dtype=torch.float32)
    dec = speed.StaticDecoder(loaded, 4, "eager")
    tok = dec._prefill()
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, _f=real, **k:
                            reads.append(_n) or _f(self, *a, **k))
    with torch.inference_mode():
        dec._step(tok)
        dec._step(tok)
    monkeypatch.undo()
    assert reads == []


def test_lm_decode_falls_back_and_says_why(monkeypatch):
    def broken(*a):
        raise RuntimeError("inductor is not available\nmore")

    monkeypatch.setitem(speed.ENGINES, "compiled", broken)
    out = speed.lm_decode(lively_lm(), new_tokens=4, repeats=1, engine="compiled")
    assert out["speed_engine"] == "static" and out["tokens_per_s"] > 0
    reasons = out["speed_engine_fallback"]
    assert reasons["compiled"] == "RuntimeError: inductor is not available"
    assert list(reasons) == ["compiled", "graphs"]  # CUDA graphs need CUDA: next engine
    assert "engine static" in out["speed_protocol"]
