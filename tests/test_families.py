"""The family matrix: tiny random models of many transformers and timm families, each
through `autoq eval --uniform 4:32`, `autoq apply` + reload and a 3-trial search with the
default space. Every weight-bearing layer is quantized or named as kept with a reason;
on every LM the quantized weights are at least 95% of the weights outside the head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoq.cli import app
from autoq.quant import LayerConfig
from autoq.plan import Plan, uniform_plan
from families import LM, VIT_SPECS, make_lm

runner = CliRunner()
UNIFORM = "4:32"


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args) -> dict:
    r = runner.invoke(app, [*map(str, args), "--json"])
    assert r.exit_code == 0, r.output[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_coverage(cov: dict, lm: bool, head_weights: int) -> None:
    assert cov["weight_bearing_layers"] >= cov["quantized_layers"] > 0
    kept = sum(v["weights"] for v in cov["kept"].values())
    assert cov["quantized_weights"] + kept == cov["all_weights"]   # nothing unaccounted
    assert all(why for why in cov["kept"])                         # each with its reason
    if lm:
        body = cov["all_weights"] - head_weights
        assert (cov["quantized_weights"] - head_weights) / body >= 0.95


def whole_model_plan(spec: str, folder: Path, loaded) -> Path:
    keep = {n: why for n, why in loaded.keep().items() if why == "a router"}
    plan = uniform_plan(spec, LayerConfig.parse(UNIFORM), loaded.shapes(), keep)
    path = folder / "plan.json"
    plan.save(path)
    return path


def family_run(tmp_path: Path, spec: str, data: list[str], lm: bool) -> None:
    from autoq.models import load_model

    loaded = load_model(spec)
    heads = sum(loaded.units()[n].weights for n in loaded.heads)
    # eval: the whole model (head and embeddings too) at 4:32; layers that cannot take it
    # are skipped and named
    r = invoke("eval", "--model", spec, *data, "--uniform", UNIFORM, "--whole-model")
    check_coverage(r["coverage"], lm, heads)
    # apply + reload: the same logits, the same size
    plan = whole_model_plan(spec, tmp_path, loaded)
    a = invoke("apply", plan, "--out", tmp_path / "model")
    assert a["reload_max_abs_diff"] == 0.0 and a["reload_size_mib"] == a["size_mib"]
    assert abs(a["saved_tensor_mib"] - a["size_mib"]) <= 0.01 * a["size_mib"]
    # a 3-trial search with the default space; its plans apply
    target = ["--target-ppl", "1e9"] if lm else ["--target-acc", "0.001"]
    s = invoke("search", "--model", spec, *data, *target, "--trials", "3", "--prior-trials", "2",
               "--out", tmp_path / "out", "--study", "s")
    assert s["finished"] == 3
    front = json.loads((tmp_path / "out" / "s" / "pareto.json").read_text())["front"]
    assert front
    Plan.load(tmp_path / "out" / "s" / front[0]["plan"]).resolve(loaded.shapes(), loaded.keep())


@pytest.mark.parametrize("family", sorted(LM))
def test_lm_family(family, tmp_path, tiny_text_file):
    folder = make_lm(family, tmp_path / family)
    family_run(tmp_path, f"hf:{folder}", ["--data", tiny_text_file, "--seq-len", "16",
                                          "--limit", "2"], lm=True)


@pytest.mark.parametrize("family", sorted(VIT_SPECS))
def test_vit_family(family, tmp_path, tiny_cifar_dir):
    family_run(tmp_path, VIT_SPECS[family], ["--data", tiny_cifar_dir, "--limit", "4"], lm=False)
