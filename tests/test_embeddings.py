"""Token embeddings and tied heads (issue 11): a packed table whose lookups dequantize
only the rows they gather; one quantized tensor for a tied embedding and head, stored
and counted once; a plan that gives them two configs unties them and counts both."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoq.models import saved
from autoq.errors import UserError
from autoq.models import load_model
from autoq.quant import LayerConfig
from autoq.plan import Plan, tie_notes
from autoq.quant.hqq_layers import gather_rows
from autoq.quant.size import measure, saved_tensor_bytes, storage_dtype

CPU, F32 = torch.device("cpu"), torch.float32
EMB, HEAD = "model.embed_tokens", "lm_head"


@pytest.mark.parametrize("nbits,group", [(8, 64), (4, 32), (4, 64), (3, 32), (2, 16),
                                          (1.58, 32), (1, 64)])
def test_gathered_rows_equal_the_full_dequantized_table_bit_for_bit(nbits, group):
    torch.manual_seed(0)
    table = torch.randn(200, 64)
    cfg = LayerConfig(nbits, group)
    layer = cfg.quant.quantize(table, None, cfg, CPU, F32)
    ids = torch.tensor([[0, 5, 199, 5], [17, 0, 123, 64]])
    full = layer.dequantize()
    assert torch.equal(gather_rows(layer, ids), full[ids])


@pytest.fixture
def tiny(tiny_llama_dir):
    return load_model(f"hf:{tiny_llama_dir}")


def resolve(loaded, layers: dict) -> dict:
    return Plan(loaded.spec, layers).resolve(loaded.shapes(), loaded.keep())


def test_a_tied_plan_stores_one_tensor_and_counts_it_once(tiny, tmp_path):
    assert tiny.quantized.tied_groups() == [sorted([EMB, HEAD])]
    fp = measure(tiny.quantized)
    table = 128 * 64
    resolved = resolve(tiny, {EMB: LayerConfig(4, 32), HEAD: LayerConfig(4, 32)})
    tiny.quantized.apply(resolved, device=CPU, dtype=F32)
    layers = tiny.quantized.installed
    assert layers[EMB] is layers[HEAD] and tiny.model.model.embed_tokens.table is layers[HEAD]
    size = measure(tiny.quantized)
    assert size.quantized_params == table          # once, not twice
    assert size.size_bytes == fp.size_bytes - table * 2 + table * 5 / 8
    assert tie_notes(resolved, tiny.quantized.tied_groups()) == []
    out = saved.save(tiny, Plan(tiny.spec, resolved), tmp_path / "m")
    weights = torch.load(out / saved.WEIGHTS, weights_only=True)
    tied = [n for n in (EMB, HEAD) if saved.TIED in weights[n]]
    assert len(tied) == 1                          # one name holds it, the other points there
    assert abs(saved_tensor_bytes(weights) - size.size_bytes) <= 0.01 * size.size_bytes


def test_an_untying_plan_counts_both_and_says_so(tiny):
    fp = measure(tiny.quantized)
    table = 128 * 64
    resolved = resolve(tiny, {EMB: LayerConfig(8, 32), HEAD: LayerConfig(4, 32)})
    tiny.quantized.apply(resolved, device=CPU, dtype=F32)
    layers = tiny.quantized.installed
    assert layers[EMB] is not layers[HEAD]
    size = measure(tiny.quantized)
    assert size.quantized_params == 2 * table
    assert size.size_bytes == fp.size_bytes - table * 2 + table * 9 / 8 + table * 5 / 8
    notes = tie_notes(resolved, tiny.quantized.tied_groups())
    assert len(notes) == 1 and notes[0].startswith("untied:") and "8:32" in notes[0]
    # only the head quantized: the embedding keeps the fp table, counted beside the head's
    tiny.quantized.apply(resolve(tiny, {HEAD: LayerConfig(4, 32)}), device=CPU, dtype=F32)
    assert measure(tiny.quantized).size_bytes == fp.size_bytes + table * 5 / 8


@pytest.mark.parametrize("layers", [
    {EMB: LayerConfig(4, 32), HEAD: LayerConfig(4, 32)},     # tied
    {EMB: LayerConfig(8, 64), HEAD: LayerConfig(2, 32)},     # untied
    {EMB: LayerConfig(4, 64)},                               # embedding only
], ids=["tied", "untied", "embedding-only"])
def test_save_and_reload_give_identical_logits(tiny, tmp_path, layers):
    resolved = resolve(tiny, {**layers, "model.layers.0.mlp.up_proj": LayerConfig(4, 32)})
    tiny.quantized.apply(resolved, device=CPU, dtype=F32)
    saved.round_to_storage_(tiny.quantized, storage_dtype(F32))
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = tiny.model(ids).logits
    out = saved.save(tiny, Plan(tiny.spec, resolved), tmp_path / "m")
    back = saved.load(out, CPU, F32)
    with torch.no_grad():
        assert torch.equal(back.model(ids).logits, before)
    assert measure(back.quantized).size_bytes == measure(tiny.quantized).size_bytes
    same = back.quantized.installed.get(EMB) is back.quantized.installed.get(HEAD)
    assert same == (layers.get(EMB) == layers.get(HEAD))


def test_a_lookup_dequantizes_only_the_rows_it_gathers(tiny, monkeypatch):
    tiny.quantized.apply(resolve(tiny, {EMB: LayerConfig(4, 32)}), device=CPU, dtype=F32)
    layer = tiny.quantized.installed[EMB]
    monkeypatch.setattr(type(layer), "dequantize",
                        lambda self: pytest.fail("the whole table was dequantized"))
    emb = tiny.model.model.embed_tokens
    assert emb(torch.tensor([[1, 2, 3]])).shape == (1, 3, 64)
    assert emb.weight.shape == (128, 64) and emb.weight.dtype == F32  # no dequantize either


def test_an_embedding_entry_that_does_not_fit_is_one_sentence(tiny, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"format": "autoq.plan/1", "model": "m", "layers": '
                    '{"model.embed_tokens": {"nbits": 4, "group_size": 48}}}')
    with pytest.raises(UserError) as e:
        Plan.load(path).resolve(tiny.shapes(), tiny.keep(), str(path))
    msg = str(e.value)
    assert "model.embed_tokens" in msg and "group_size=48" in msg and "valid: 8, 16, 32" in msg
    assert "\n" not in msg


def test_default_leaves_head_and_embeddings_alone(tiny):
    resolved = Plan(tiny.spec, {}, default=LayerConfig(4, 32)).resolve(tiny.shapes(), tiny.keep())
    assert resolved[EMB] is None and resolved[HEAD] is None
    assert all(c is not None for n, c in resolved.items() if n not in (EMB, HEAD))


def test_position_embeddings_are_quantized_with_their_own_forward(tmp_path):
    """GPT-2's learned positions (nn.Embedding) and OPT's (a subclass with an offset):
    quantized, the model's own forward (offset included) still runs, and 8-bit tables
    change the logits only a little."""
    from families import make_lm

    for family, names in (("gpt2", ("transformer.wte", "transformer.wpe")),
                          ("opt", ("model.decoder.embed_tokens", "model.decoder.embed_positions"))):
        loaded = load_model(f"hf:{make_lm(family, tmp_path / family)}")
        ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = loaded.model(ids).logits
        layers = {n: LayerConfig(8, 64) for n in names}
        loaded.quantized.apply(resolve(loaded, layers), device=CPU, dtype=F32)
        assert isinstance(loaded.model.get_submodule(names[1]), nn.Embedding)
        with torch.no_grad():
            after = loaded.model(ids).logits
        assert 0 < (after - before).abs().max() < 0.05 * before.abs().max()
