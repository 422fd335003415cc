"""QuantizedModel.apply: equal to HQQ used directly, re-applicable, restorable; the layer cache
quantizes each (layer, nbits, group_size) pair once and never serves a stale entry."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autoq.models import load_model
from autoq.quant import LayerConfig
from autoq.quant.cache import LayerCache
from autoq.quant.model import QuantizedModel

CPU = torch.device("cpu")
F32 = torch.float32

# a mixed plan over the tiny Llama's layers (lm_head tied, left alone)
MIXED = {"model.layers.0.self_attn.q_proj": LayerConfig(8, 64),
         "model.layers.0.self_attn.k_proj": LayerConfig(4, 32),
         "model.layers.0.mlp.down_proj": LayerConfig(2, 16),
         "model.layers.1.mlp.up_proj": LayerConfig(3, 64),
         "model.layers.1.mlp.gate_proj": LayerConfig(4, None),
         "model.layers.1.self_attn.o_proj": LayerConfig(1.58, 64),
         "model.layers.1.self_attn.v_proj": None}


def full(resolved, qm):
    return {n: resolved.get(n) for n in qm.units}


def hqq_reference(linear: nn.Linear, cfg: LayerConfig):
    """HQQ's own HQQLinear(axis=1) on a copy of `linear`, with scale and zero then
    stored in fp16 as autoq stores them (the quantization itself happens in fp32)."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    ref = HQQLinear(copy.deepcopy(linear),
                    BaseQuantizeConfig(nbits=cfg.nbits, group_size=cfg.group_size, axis=1),
                    compute_dtype=F32, device="cpu")
    fp32_meta = {k: ref.meta[k].clone() for k in ("scale", "zero")}
    for key in ("scale", "zero"):
        ref.meta[key] = ref.meta[key].half()
    return ref, fp32_meta


@pytest.fixture
def llama(tiny_llama_dir):
    return load_model(f"hf:{tiny_llama_dir}")


def quantize(model, plan, cache):
    """`plan` (over some layers) on a model not quantized before."""
    qm = QuantizedModel(model)
    return qm.apply(full(plan, qm), device=CPU, dtype=F32, cache=cache)


def logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


IDS = torch.arange(3, 40).remainder(80)[None] + 3


def test_quantize_equals_direct_hqq(llama):
    model, qm = llama.model, llama.quantized
    originals = {n: copy.deepcopy(m) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    reference = copy.deepcopy(model)
    qm.apply(full(MIXED, qm), device=CPU, dtype=F32)
    for name, cfg in MIXED.items():
        ours = model.get_submodule(name)
        if cfg is None:
            assert ours is qm.originals[name]
            continue
        ref, fp32_meta = hqq_reference(originals[name], cfg)
        reference.set_submodule(name, ref)
        assert torch.equal(ours.W_q, ref.W_q), name
        assert ours.meta["scale"].dtype == ours.meta["zero"].dtype == torch.float16
        for key in ("scale", "zero"):
            assert torch.equal(ours.meta[key], ref.meta[key]), (name, key)
            # fp16 storage only rounds HQQ's fp32 scale/zero (relative error <= 2^-11)
            assert torch.allclose(ours.meta[key].float(), fp32_meta[key], rtol=2**-11, atol=0)
        x = torch.randn(5, originals[name].in_features)
        assert torch.equal(ours(x), ref(x)), name
        assert ours.dequantize().dtype == F32
    assert torch.equal(logits(model, IDS), logits(reference, IDS))


def test_quantize_vit_equals_direct_hqq(tiny_vit_checkpoint):
    spec, path = tiny_vit_checkpoint
    loaded = load_model(f"timm:{spec}", checkpoint=str(path))
    model = loaded.model
    plan = {"blocks.0.attn.qkv": LayerConfig(4, 64), "blocks.1.mlp.fc2": LayerConfig(8, 128),
            "head": LayerConfig(4, 32)}
    reference = copy.deepcopy(model)
    for name, cfg in plan.items():
        reference.set_submodule(name, hqq_reference(model.get_submodule(name), cfg)[0])
    qm = QuantizedModel(model)
    qm.apply(full(plan, qm), device=CPU, dtype=F32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x))


def test_reapply_and_restore(llama, tiny_llama_dir):
    model, qm = llama.model, llama.quantized
    before = logits(model, IDS)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    other = {n: LayerConfig(4, 64) for n in MIXED}
    fresh = load_model(f"hf:{tiny_llama_dir}")
    fresh.quantized.apply(full(other, fresh.quantized), device=CPU, dtype=F32)

    qm.apply(full(MIXED, qm), device=CPU, dtype=F32)
    mixed = logits(model, IDS)
    assert not torch.equal(mixed, before)
    qm.apply(full(other, qm), device=CPU, dtype=F32)  # another plan in place
    assert torch.equal(logits(model, IDS), logits(fresh.model, IDS))
    qm.apply({n: None for n in qm.units}, device=CPU, dtype=F32)
    assert torch.equal(logits(model, IDS), before)
    for name, module in model.named_modules():
        if name in linears:
            assert module is linears[name]
    embeddings = {n: (m.embedding_dim, m.num_embeddings) for n, m in model.named_modules()
                  if isinstance(m, nn.Embedding)}
    assert qm.shapes() == {**{n: (m.in_features, m.out_features)
                              for n, m in linears.items()}, **embeddings}


def test_cache_quantizes_each_pair_once(llama):
    qm = llama.quantized
    cache = LayerCache()
    plan_b = {**MIXED, "model.layers.0.self_attn.q_proj": LayerConfig(4, 64),
              "model.layers.1.mlp.down_proj": LayerConfig(8, 64)}
    for plan in (MIXED, plan_b, MIXED, plan_b, MIXED):
        qm.apply(full(plan, qm), device=CPU, dtype=F32, cache=cache)
    pairs = {(n, c) for p in (MIXED, plan_b) for n, c in p.items() if c is not None}
    assert len(cache.quantized) == len(set(cache.quantized)) == len(pairs)
    assert set(cache.quantized) == pairs


def test_disk_cache_reused_across_caches_and_keyed_by_weights(tmp_path, tiny_llama_dir,
                                                              monkeypatch):
    import autoq.quant.hqq as q

    folder = tmp_path / "layers"
    planned = {n: c for n, c in MIXED.items() if c is not None}

    first = load_model(f"hf:{tiny_llama_dir}").model
    cache1 = LayerCache(folder)
    quantize(first, MIXED, cache=cache1)
    assert len(cache1.quantized) == len(planned) and cache1.disk_hits == 0
    assert len(list(folder.glob("*.pt"))) == len(planned)
    expected = logits(first, IDS)

    second = load_model(f"hf:{tiny_llama_dir}").model  # another process, same weights
    cache2 = LayerCache(folder)
    quantize(second, MIXED, cache=cache2)
    assert cache2.quantized == [] and cache2.disk_hits == len(planned)
    assert torch.equal(logits(second, IDS), expected)
    for name in planned:  # loaded entries keep 16-bit scale/zero like fresh ones
        assert second.get_submodule(name).meta["scale"].dtype == torch.float16

    changed = load_model(f"hf:{tiny_llama_dir}").model  # one layer's weights differ
    with torch.no_grad():
        changed.get_submodule("model.layers.0.mlp.down_proj").weight[0, 0] += 1e-3
    cache3 = LayerCache(folder)
    quantize(changed, MIXED, cache=cache3)
    assert cache3.quantized == [("model.layers.0.mlp.down_proj", LayerConfig(2, 16))]
    assert cache3.disk_hits == len(planned) - 1

    monkeypatch.setattr(q, "version", lambda pkg: "0.0.0-other" if pkg == "hqq" else "1")
    other_hqq = load_model(f"hf:{tiny_llama_dir}").model
    cache4 = LayerCache(folder)
    quantize(other_hqq, MIXED, cache=cache4)
    assert cache4.disk_hits == 0 and len(cache4.quantized) == len(planned)


def test_corrupt_cache_entry_is_recomputed(tmp_path, tiny_llama_dir):
    folder = tmp_path / "layers"
    plan = {"model.layers.0.self_attn.q_proj": LayerConfig(4, 32)}
    model = load_model(f"hf:{tiny_llama_dir}").model
    quantize(model, plan, cache=LayerCache(folder))
    expected = logits(model, IDS)
    (entry,) = folder.glob("*.pt")
    entry.write_bytes(b"not a torch file")
    again = load_model(f"hf:{tiny_llama_dir}").model
    cache = LayerCache(folder)
    quantize(again, plan, cache=cache)
    assert cache.disk_hits == 0 and len(cache.quantized) == 1
    assert torch.equal(logits(again, IDS), expected)
