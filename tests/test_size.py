"""Exact size: nbits + 32/group_size bits per quantized weight, every other float
tensor at 16 bits (`size_mib`; `memory_mib` as held), tied weights once; equal to the
tensor bytes of the saved model within 1%."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoq.models import saved
from autoq.models import load_model
from autoq.quant import LayerConfig
from autoq.plan import Plan
from autoq.search.prior import layer_bits
from autoq.quant.model import quantize_
from autoq.quant.size import measure, saved_tensor_bytes

CPU = torch.device("cpu")


@pytest.mark.parametrize("nbits,group,fin,expected", [
    (4, 64, 576, 4.5), (8, 128, 1536, 8.25), (2, 16, 64, 4.0), (4, None, 64, 4.5),
    (1.58, 64, 64, 2.5), (3, 64, 64, 3.7)])
def test_bits_per_weight_formula(nbits, group, fin, expected):
    assert LayerConfig(nbits, group).bits_per_weight(fin) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("nbits,group,fin,fout,expected", [
    (4, 64, 128, 64, 4.5), (8, 128, 256, 64, 8.25), (2, 32, 64, 96, 3.0),
    (8, None, 128, 32, 8.25), (1.58, 64, 64, 80, 2.5), (3, 32, 64, 80, 4.2),
    (1, 16, 64, 64, 3.0)])
def test_measured_bits_equal_formula(nbits, group, fin, fout, expected):
    """On real HQQ layers: packed weight + fp16 scale + fp16 zero bytes, exactly."""
    model = nn.Sequential(nn.Linear(fin, fout, bias=False), nn.LayerNorm(fout))
    qm = quantize_(model, {"0": LayerConfig(nbits, group)}, device=CPU, dtype=torch.float32)
    size = measure(qm)
    assert size.bits_per_weight == expected
    assert size.quantized_params == fin * fout
    ln_bytes = 2 * fout * 2           # LayerNorm weight and bias, stored in 16 bits
    assert size.size_bytes == fin * fout * expected / 8 + ln_bytes
    assert size.memory_mib * 2**20 == fin * fout * expected / 8 + 2 * ln_bytes  # fp32 held
    assert size.total_params == fin * fout + 2 * fout
    assert layer_bits((fin, fout), LayerConfig(nbits, group), 32.0) == fin * fout * expected


@pytest.mark.parametrize("nbits,group,fin,fout", [
    (3, 64, 576, 576), (3, 64, 576, 192), (3, 192, 1536, 576), (4, 192, 576, 1536),
    (2, 64, 576, 192), (8, 192, 576, 576), (4, 64, 64, 48)])
def test_stored_bits_are_exactly_what_a_layer_stores(nbits, group, fin, fout):
    """The knapsack's additive sizes (3-bit: 10 values a 32-bit word along the groups, so
    576 x 576 at 3:64 stores 1,228,800 bits, not 3.7 x 331,776)."""
    model = nn.Sequential(nn.Linear(fin, fout, bias=False))
    cfg = LayerConfig(nbits, group)
    size = measure(quantize_(model, {"0": cfg}, device=CPU, dtype=torch.float32))
    assert size.size_bytes * 8 == cfg.stored_bits(fin, fout) == layer_bits((fin, fout), cfg, 16)


def test_bias_counted_as_stored():
    model = nn.Sequential(nn.Linear(64, 32, bias=True))
    qm = quantize_(model, {"0": LayerConfig(4, 64)}, device=CPU, dtype=torch.float32)
    size = measure(qm)
    assert size.bits_per_weight == 4.5  # the bias is not a quantized weight
    assert size.size_bytes == 64 * 32 * 4.5 / 8 + 32 * 2   # bias at 16 bits


def test_unquantized_size_is_sum_of_tensors_tied_once(tiny_llama_dir):
    loaded = load_model(f"hf:{tiny_llama_dir}")
    model = loaded.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    unique = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    with_duplicates = sum(p.numel() * p.element_size()
                          for _, p in model.named_parameters(remove_duplicate=False))
    assert with_duplicates == unique + model.lm_head.weight.numel() * 4  # really tied
    persistent = sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                     if n.rpartition(".")[2] not in
                     model.get_submodule(n.rpartition(".")[0])._non_persistent_buffers_set)
    size = measure(loaded.quantized)
    assert size.size_bytes == (unique + persistent) // 2     # fp32 held, 16 bits stored
    assert size.memory_mib == (unique + persistent) / 2**20
    assert size.bits_per_weight == 16.0
    assert size.total_params == sum(p.numel() for p in model.parameters())


def test_quantized_size_counts_tied_embedding_once(tiny_llama_dir):
    loaded = load_model(f"hf:{tiny_llama_dir}")
    model = loaded.model
    emb = model.model.embed_tokens.weight
    shapes = loaded.shapes()
    resolved = {n: (None if n in ("lm_head", "model.embed_tokens") else LayerConfig(4, 32))
                for n in shapes}
    loaded.quantized.apply(resolved, device=CPU, dtype=torch.float32)
    others = sum(p.numel() * 2 for n, p in model.named_parameters()  # dedups the tied head
                 if not n.endswith(".W_q"))  # (HQQ keeps W_q as a parameter)
    quantized = sum(layer_bits(shapes[n], c, 32.0) for n, c in resolved.items() if c) / 8
    size = measure(loaded.quantized)
    assert size.bits_per_weight == 5.0
    assert size.size_bytes == quantized + others
    assert model.lm_head.weight is emb and others >= emb.numel() * 2


@pytest.mark.parametrize("kind", ["lm", "vit"])
def test_size_equals_saved_tensor_bytes(tmp_path, tiny_llama_dir, tiny_vit_checkpoint, kind):
    if kind == "lm":
        loaded = load_model(f"hf:{tiny_llama_dir}")
        plan = Plan(loaded.spec, {"model.layers.0.mlp.up_proj": LayerConfig(8, 64),
                                  "model.layers.1.self_attn.k_proj": None},
                    default=LayerConfig(4, 32))
    else:
        spec, path = tiny_vit_checkpoint
        loaded = load_model(f"timm:{spec}", checkpoint=str(path))
        plan = Plan(loaded.spec, {"head": LayerConfig(8, 64)}, default=LayerConfig(2, 16))
    loaded.quantized.apply(plan.resolve(loaded.shapes(), loaded.keep()), device=CPU,
                           dtype=torch.float32)
    size = measure(loaded.quantized)
    out = saved.save(loaded, plan, tmp_path / "q")
    file_bytes = saved_tensor_bytes(torch.load(out / saved.WEIGHTS, weights_only=True))
    assert abs(file_bytes - size.size_bytes) <= 0.01 * size.size_bytes
    back = saved.load(out, CPU, torch.float32)
    assert measure(back.quantized).size_bytes == size.size_bytes
