"""The torch-int4 CPU backend (issue 23): every HQQ layer served exactly by torch's int4
CPU kernels (<= 4-bit in one call, 8-bit as two 4-bit halves, the rest dequantized once),
checked against HQQ's dequantized matmul layer by layer and on whole tiny models of
several families; the serving report says per layer what serves it and why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoq import pipeline
from autoq.models import load_model
from autoq.quant import LayerConfig
from autoq.quant.model import quantize_
from autoq.serve.backend import Served, prepare_
from autoq.serve.torch_int4 import Dequantized, Int4Linear, how

pytestmark = pytest.mark.usefixtures("one_thread")
CPU, F32 = torch.device("cpu"), torch.float32
BF16_REL = 1e-2   # bf16 activations and scales: seen <= 4e-3 of max |y|


def one_layer(cfg: LayerConfig, fin: int = 256, fout: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(fin, fout, bias=True))
    qm = quantize_(model, {"0": cfg}, device=CPU, dtype=F32)
    layer = qm.installed["0"]
    return qm, layer, layer.dequantize().float(), layer.bias.float()


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("nbits", [1, 1.58, 2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128, None])
def test_each_layer_matches_hqqs_dequantized_matmul(nbits, group):
    qm, layer, w, b = one_layer(LayerConfig(nbits, group))
    report = prepare_(qm, "torch-int4")
    served = qm.model[0]
    assert isinstance(served, Served) and isinstance(served.kernel, Int4Linear)
    kind = "int4" if nbits <= 4 else "int8-split"
    assert report["layers"]["0"].startswith(f"{kind}: ") and report["fallback"] == {}
    x = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(1))
    ref = x @ w.T + b
    with torch.no_grad():
        y = served(x)
    assert y.dtype == F32 and y.shape == ref.shape
    assert rel_error(y, ref) < BF16_REL, (nbits, group)
    assert rel_error(served.kernel.dequantize(), w) < BF16_REL   # `.weight` readers


@pytest.mark.parametrize("cfg, fin, fout, why", [
    (LayerConfig(4, 16), 256, 64, "group 16"),                 # the kernel's groups start at 32
    (LayerConfig(4, 32), 256, 40, "out_features 40"),          # N must be a multiple of 16
    (LayerConfig(4, 48), 96, 64, "group 48"),
])
def test_what_the_kernel_cannot_take_is_dequantized_once_and_said(cfg, fin, fout, why):
    qm, layer, w, b = one_layer(cfg, fin, fout)
    kind, reason = how(cfg, fin, fout)
    assert kind == "dequantized" and why in reason
    report = prepare_(qm, "torch-int4")
    assert report["layers"]["0"] == f"dequantized: {reason}"
    served = qm.model[0]
    assert isinstance(served.kernel, Dequantized)
    x = torch.randn(2, fin)
    with torch.no_grad():
        assert torch.allclose(served(x), x @ w.T + b, atol=1e-5, rtol=1e-5)  # exact in fp32


def test_a_whole_row_group_is_served_by_the_kernel_exactly():
    """groups of in_features (null): the largest kernel group dividing it, scales
    repeated."""
    qm, layer, w, b = one_layer(LayerConfig(4, None), fin=576, fout=32)
    prepare_(qm, "torch-int4")
    assert isinstance(qm.model[0].kernel, Int4Linear) and qm.model[0].kernel.kgroup == 64
    x = torch.randn(4, 576)
    with torch.no_grad():
        assert rel_error(qm.model[0](x), x @ w.T + b) < BF16_REL


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "opt", "mixtral"])
def test_whole_tiny_models_match_hqq(family, tmp_path):
    """Every linear (Conv1D, embeddings, experts and all) at a mix of bit widths: logits
    within bf16 rounding of the same plan on HQQ's own forward; embeddings stay lookups,
    experts stay on their per-expert path, and the report says so."""
    from families import make_lm

    folder = make_lm(family, tmp_path / family)
    served, ref = (load_model(f"hf:{folder}") for _ in range(2))
    cfgs = [LayerConfig(4, 32), LayerConfig(8, 64), LayerConfig(2, 32), LayerConfig(3, 32)]
    resolved = {n: cfgs[i % len(cfgs)] for i, n in enumerate(served.shapes())}
    for loaded in (served, ref):
        pipeline.quantize(loaded, resolved)
    report = pipeline.serve(served, "torch-int4")
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = served.model(ids).logits, ref.model(ids).logits
    assert rel_error(got, want) < 5e-2, family   # a few layers of bf16 rounding
    units = served.quantized.units
    assert set(report["fallback"]) == {n for n, u in units.items()
                                       if u.type in ("embedding", "expert")}
    assert report["served_layers"] == sum(u.type in ("linear", "conv1d")
                                          for u in units.values()) > 0


def test_serving_releases_packed_copies_and_memory_shows_it(tiny_llama_dir, tmp_path):
    """autoq.load drops the packed copies of converted layers: memory_mib is what the
    served model holds; the stored size does not change."""
    from typer.testing import CliRunner

    import autoq
    from autoq.cli import app

    plan = tmp_path / "plan.json"
    plan.write_text('{"format": "autoq.plan/2", "model": "hf:%s", "layers": {}, '
                    '"default": {"nbits": 4, "group_size": 64}}' % tiny_llama_dir)
    r = CliRunner().invoke(app, ["apply", str(plan), "--out", str(tmp_path / "m"), "-q"])
    assert r.exit_code == 0, r.output
    loaded, report = pipeline.open_folder(tmp_path / "m")
    assert report["backend"] == "torch-int4" and loaded.dtype == torch.bfloat16
    assert loaded.quantized.installed == {}                    # every packed copy released
    hqq_loaded, hqq_report = pipeline.open_folder(tmp_path / "m", backend="hqq", dtype="fp32")
    assert report["memory_mib"] < hqq_report["memory_mib"]    # bf16 norms/table, no copies
    model, _ = autoq.load(tmp_path / "m")
    assert model.model.layers[0].mlp.up_proj.weight.shape == (128, 64)  # read from the kernel
