"""`autoq search`: seeding, spaces, the quality constraint, resume, and end-to-end runs
of `--model llama` / `--model deit` with tiny random stand-ins (only the hub download
is replaced: the registry entries load a local folder / tiny architecture instead)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoq.cli import app
from autoq.errors import UserError
from autoq.quant import LayerConfig
from autoq.plan import Plan
from autoq.search import knapsack
from autoq.search.space import parse_space

runner = CliRunner()

SPACE = """format: autoq.space/1
options: [null, "8:32", "4:32", "4:64", "2:32"]
groups:
  - {name: attn, match: 'self_attn\\.', per_layer: true}
  - {name: mlp, match: 'mlp\\.'}
ignore: ['lm_head']
baselines: ["4:32"]
"""


# ---- seeding (pure) -------------------------------------------------------------------
def _toy_costs():
    # three choices; cost falls and bits rise with precision; "c" is the most sensitive
    costs = {p: {"2": w * 4.0, "4": w * 1.0, "8": w * 0.1} for p, w in
             (("a", 1.0), ("b", 0.5), ("c", 3.0))}
    bits = {p: {"2": 2.0 * n, "4": 4.0 * n, "8": 8.0 * n} for p, n in
            (("a", 100), ("b", 100), ("c", 100))}
    return costs, bits


def test_seeds_span_the_whole_size_range():
    costs, bits = _toy_costs()
    configs = knapsack.prior(costs, bits, 4)
    sizes = [knapsack.totals(c, costs, bits)[1] for c in configs]
    assert min(sizes) == 600 and max(sizes) == 2400          # all-2-bit .. all-8-bit
    assert len(configs) == 4 and len({tuple(sorted(c.items())) for c in configs}) == 4
    # along the hull, a bigger config never has a larger predicted loss
    pts = sorted(knapsack.totals(c, costs, bits)[::-1] for c in knapsack.hull(costs, bits))
    assert all(a[1] >= b[1] for a, b in zip(pts, pts[1:]))


def test_seeds_put_precision_where_sensitivity_is():
    costs, bits = _toy_costs()
    mid = [c for c in knapsack.hull(costs, bits) if 600 < knapsack.totals(c, costs, bits)[1] < 2400]
    assert mid and all(int(c["c"]) >= int(c["b"]) for c in mid)  # "c" upgraded before "b"


def test_seeds_include_the_smallest_predicted_feasible_config():
    costs, bits = _toy_costs()
    budget = 3.0
    configs = knapsack.prior(costs, bits, 3, max_cost=budget)
    feasible = [c for c in knapsack.hull(costs, bits) if knapsack.totals(c, costs, bits)[0] <= budget]
    edge = min(feasible, key=lambda c: knapsack.totals(c, costs, bits)[1])
    assert edge in configs


def test_a_single_prior_trial_is_the_largest_hull_config():
    costs, bits = _toy_costs()
    one, = knapsack.prior(costs, bits, 1)
    assert knapsack.totals(one, costs, bits)[1] == 2400


def test_seeds_respect_a_size_cap():
    costs, bits = _toy_costs()
    assert all(knapsack.totals(c, costs, bits)[1] <= 1500
               for c in knapsack.prior(costs, bits, 4, max_bits=1500))


# ---- spaces -------------------------------------------------------------------------
SHAPES = {f"model.layers.{b}.{r}": s for b in range(4) for r, s in
          (("self_attn.q_proj", (64, 64)), ("self_attn.o_proj", (64, 64)),
           ("mlp.down_proj", (96, 64)))} | {"lm_head": (64, 128)}


def test_space_binds_per_layer_and_grouped_choices():
    space = parse_space({"format": "autoq.space/1", "options": [None, "4:32", "4:64", "8:64"],
                         "groups": [{"name": "attn", "match": r"self_attn\.", "per_layer": True},
                                    {"name": "down-outer", "match": "down_proj",
                                     "blocks": ["first", "last"]},
                                    {"name": "down-inner", "match": "down_proj"}],
                         "ignore": ["lm_head"],
                         "pinned": {"model.layers.0.self_attn.q_proj": "8:64"}}, "s.yaml")
    choices, fixed = space.bind(SHAPES)
    by = {c.param: c for c in choices}
    assert "model.layers.0.self_attn.q_proj" not in by and \
        fixed["model.layers.0.self_attn.q_proj"] == LayerConfig(8, 64)
    assert len([c for c in choices if "self_attn" in c.param]) == 7  # per layer
    assert by["down-outer"].layers == ("model.layers.0.mlp.down_proj", "model.layers.3.mlp.down_proj")
    assert len(by["down-inner"].layers) == 2
    # 64 does not divide in_features=96: filtered out for down_proj only
    assert "4:64" not in by["down-inner"].labels and "4:64" in by["model.layers.1.self_attn.o_proj"].labels
    assert fixed["lm_head"] is None


@pytest.mark.parametrize("obj, words", [
    ({"format": "autoq.space/1", "options": ["4:64"], "groups": [{"name": "g", "match": "("}]},
     "regex"),
    ({"format": "autoq.space/1", "options": ["5:64"], "groups": [{"name": "g", "match": "x"}]},
     "nbits"),
    ({"format": "autoq.space/1", "options": ["4:64"], "groups": [{"name": "g", "match": "x",
                                                                  "blocks": "top"}]}, "blocks"),
    ({"format": "autoq.space/1", "options": ["4:64"], "groups": [{"name": "g", "match": "x"}],
      "extra": 1}, "unknown key"),
])
def test_space_errors_are_one_sentence(obj, words):
    with pytest.raises(UserError, match=words):
        parse_space(obj, "bad.yaml")


def test_space_that_matches_nothing_is_an_error():
    space = parse_space({"format": "autoq.space/1", "options": ["4:32"],
                         "groups": [{"name": "g", "match": "nothing"}]}, "s.yaml")
    with pytest.raises(UserError, match="no group of this space selects"):
        space.bind(SHAPES)


# ---- end to end on tiny stand-ins ---------------------------------------------------------
def _search(tmp_path, *args):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(tmp_path / "out"),
                                 "--seq-len", "32", "--limit", "4", "--prior-trials", "3", "-q", *args])
    assert result.exit_code == 0, result.output
    return result


def _finished(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    return [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]


@pytest.fixture
def llama_stand_in(monkeypatch, tiny_llama_dir):
    import autoq.models.hf as hf

    monkeypatch.setattr(hf, "LLAMA_ID", str(tiny_llama_dir))


def test_search_llama_runs_end_to_end_and_plans_apply(tmp_path, llama_stand_in, tiny_text_file):
    _search(tmp_path, "--model", "llama", "--target-ppl", "14", "--trials", "5", "--study", "s",
            "--data", str(tiny_text_file))
    folder = tmp_path / "out" / "s"
    assert len(_finished(folder)) == 5
    pareto = json.loads((folder / "pareto.json").read_text())
    assert pareto["front"] and pareto["target"] == 14
    assert pareto["objective"] == "size" == json.loads((folder / "study.json").read_text())[
        "objective"]
    for r in _finished(folder):   # the predicted latency is recorded in a size study too
        m = r["metrics"]
        assert m["speed_source"] == "predicted"
        assert m["tokens_per_s"] == pytest.approx(1e3 / m["latency_ms"])
    assert not (folder / "best.json").exists()   # a random model is nowhere near ppl 14
    baselines = json.loads((folder / "baselines.json").read_text())
    assert {"fp", "4:32"} <= set(baselines)
    for entry in pareto["front"]:
        plan = Plan.load(folder / entry["plan"])
        assert plan.metrics["size_mib"] == pytest.approx(entry["metrics"]["size_mib"])
        out = tmp_path / f"applied-{entry['plan']}"
        result = runner.invoke(app, ["apply", str(folder / entry["plan"]), "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        assert (out / "qmodel.pt").exists()


def test_best_json_meets_the_target_and_is_the_smallest_that_does(tmp_path, tiny_llama_dir,
                                                                   tiny_text_file):
    common = ["--model", f"hf:{tiny_llama_dir}", "--data", str(tiny_text_file)]

    def uniform(cfg):
        out = runner.invoke(app, ["eval", *common, "--seq-len", "32", "--limit", "4",
                                  "--uniform", cfg, "--json"])
        return json.loads(out.stdout)["ppl"]

    # between the 8-bit and the 2-bit uniform configs: some trials meet it, some do not
    target = (uniform("8:32") + uniform("2:32")) / 2
    _search(tmp_path, *common, "--target-ppl", str(target), "--trials", "8", "--study", "s",
            "--no-prune")
    folder = tmp_path / "out" / "s"
    rows = _finished(folder)
    feasible = [r for r in rows if r["feasible"]]
    assert feasible and len(feasible) < len(rows)
    assert all(r["metrics"]["ppl"] <= target for r in feasible)
    assert all(r["metrics"]["ppl"] > target for r in rows if not r["feasible"])
    best = Plan.load(folder / "best.json")
    assert best.metrics["ppl"] <= target
    assert best.metrics["size_mib"] == pytest.approx(min(r["metrics"]["size_mib"] for r in feasible))


def test_resume_continues_the_same_study_to_exactly_trials(tmp_path, tiny_llama_dir, tiny_text_file):
    common = ["--model", f"hf:{tiny_llama_dir}", "--data", str(tiny_text_file),
              "--target-ppl", "1e6", "--study", "s"]
    _search(tmp_path, *common, "--trials", "3")
    folder = tmp_path / "out" / "s"
    first = {r["number"]: r for r in _finished(folder)}
    assert len(first) == 3
    _search(tmp_path, *common, "--trials", "6")
    rows = _finished(folder)
    assert len(rows) == 6 and len({r["number"] for r in rows}) == 6
    assert all(first[n]["metrics"] == r["metrics"] for r in rows for n in [r["number"]] if n in first)
    _search(tmp_path, *common, "--trials", "6")     # nothing left to do
    assert len(_finished(folder)) == 6
    best = Plan.load(folder / "best.json")           # every config meets ppl 1e6: the smallest
    assert best.metrics["size_mib"] == pytest.approx(min(r["metrics"]["size_mib"] for r in rows
                                                         if r["state"] == "COMPLETE"))


def test_search_deit_runs_end_to_end(tmp_path, monkeypatch, tiny_vit_checkpoint, tiny_cifar_dir):
    import autoq.models.vit as vit

    spec, ckpt = tiny_vit_checkpoint
    monkeypatch.setattr(vit, "DEIT_KWARGS", vit.parse_timm_spec(spec)[1])
    space = tmp_path / "vit.yaml"
    space.write_text('format: autoq.space/1\noptions: [null, "8:32", "4:32"]\n'
                     "groups: [{name: blocks, match: 'blocks\\.', per_layer: true}]\n"
                     "ignore: ['^head']\nbaselines: ['4:32']\n")
    result = runner.invoke(app, ["search", "--model", "deit", "--checkpoint", str(ckpt),
                                 "--data", str(tiny_cifar_dir), "--target-acc", "0.9",
                                 "--trials", "4", "--space", str(space), "--seeds", "2",  # old name
                                 "--out", str(tmp_path / "out"), "--study", "d", "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "d"
    assert len(_finished(folder)) == 4
    pareto = json.loads((folder / "pareto.json").read_text())
    assert pareto["metric"] == "accuracy" and pareto["front"]
    assert all("images_per_s" in e["metrics"] for e in pareto["front"])
    plan = Plan.load(folder / pareto["front"][0]["plan"])
    assert plan.extra["checkpoint"] == str(ckpt)


def test_target_kind_must_match_the_task(tmp_path, tiny_llama_dir, tiny_text_file):
    result = runner.invoke(app, ["search", "--model", f"hf:{tiny_llama_dir}", "--data",
                                 str(tiny_text_file), "--target-acc", "0.5", "--out",
                                 str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2 and "--target-ppl" in result.output
    result = runner.invoke(app, ["search", "--model", f"hf:{tiny_llama_dir}", "-q"])
    assert result.exit_code == 2 and "exactly one quality target" in result.output


def test_fast_scoring_gives_the_same_metric_and_restores_hqq_layers(tiny_llama_dir, tiny_text_file):
    from hqq.core.quantize import HQQLinear

    from autoq.pipeline.evaluator import EvalSettings, Evaluator

    ev = Evaluator(EvalSettings(model=f"hf:{tiny_llama_dir}", task="wikitext2",
                                data=str(tiny_text_file), seq_len=32, limit=3))
    for cfg in (LayerConfig(4, 32), LayerConfig(3, 64), LayerConfig(2, 32)):
        resolved = {n: (None if n == "lm_head" else cfg) for n in ev.shapes}
        ev.fast_scoring = False
        slow = ev.run(resolved, speed=False)
        ev.fast_scoring = True
        fast = ev.run(resolved, speed=False)
        assert fast["ppl"] == slow["ppl"] and fast["size_mib"] == slow["size_mib"]
        layer = ev.loaded.model.get_submodule("model.layers.0.mlp.down_proj")
        assert isinstance(layer, HQQLinear)   # speed and saving see the real layers again


def test_scoring_can_stop_and_continue_where_it_stopped(tiny_llama_dir, tiny_text_file):
    from autoq.pipeline.evaluator import EvalSettings, Evaluator

    ev = Evaluator(EvalSettings(model=f"hf:{tiny_llama_dir}", task="wikitext2",
                                data=str(tiny_text_file), seq_len=32, limit=12))
    resolved = {n: (None if n == "lm_head" else LayerConfig(4, 32)) for n in ev.shapes}
    ev.use_reference(ev.measure_reference()[0])  # KL units too, continued the same way
    full = ev.run(resolved, speed=False)
    part = ev.run(resolved, speed=False, check_every=4, stop=lambda u: len(u["ppl"]) >= 4)
    assert part["fraction"] == pytest.approx(4 / 12)
    assert part["units"] == {m: v[:4] for m, v in full["units"].items()}
    rest = ev.run(resolved, speed=False, done=part["units"])
    assert rest["units"] == full["units"] and rest["ppl"] == full["ppl"]
    assert rest["kld"] == full["kld"] > 0


def test_early_stopping_estimates_trials_and_scores_the_front_in_full(tmp_path, tiny_llama_dir,
                                                                     tiny_text_file):
    """Trials stop once the windows seen decide the target; every Pareto config is then
    scored on all the windows, and its plan's metrics equal `autoq eval --plan`."""
    common = ["--model", f"hf:{tiny_llama_dir}", "--data", str(tiny_text_file),
              "--seq-len", "32", "--limit", "20"]
    fp = json.loads(runner.invoke(app, ["eval", *common, "--json"]).stdout)["ppl"]
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    result = runner.invoke(app, ["search", *common, "--space", str(space), "--out",
                                 str(tmp_path / "out"), "--prior-trials", "4", "--study", "s",
                                 "--target-ppl", str(fp * 1.01), "--trials", "8", "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "s"
    rows = _finished(folder)
    partial = [r for r in rows if r["metrics"].get("fraction", 1) < 1 and "estimate" not in r["metrics"]]
    assert partial, "no trial was decided before the last window"
    for r in partial:
        lo, hi = r["metrics"]["ppl_interval"]
        assert lo <= r["metrics"]["ppl"] <= hi
        assert (r["state"] == "PRUNED") == (lo > fp * 1.01)   # pruned: surely worse
    pareto = json.loads((folder / "pareto.json").read_text())
    assert any("estimate" in e["metrics"] for e in pareto["front"])  # rescored in full
    for entry in pareto["front"]:
        assert entry["metrics"]["fraction"] == 1
        plan = folder / entry["plan"]
        again = json.loads(runner.invoke(app, ["eval", *common, "--plan", str(plan), "--json"]).stdout)
        assert again["ppl"] == pytest.approx(entry["metrics"]["ppl"], rel=1e-5)


def test_unknown_sampler_is_one_sentence(tmp_path, tiny_llama_dir, tiny_text_file):
    result = runner.invoke(app, ["search", "--model", f"hf:{tiny_llama_dir}", "--data",
                                 str(tiny_text_file), "--target-ppl", "10", "--sampler", "cma",
                                 "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2 and "--sampler 'cma'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_trials_over_the_size_cap_stop_before_scoring(tmp_path, tiny_llama_dir, tiny_text_file):
    """--max-size-mib below every config: each trial is pruned before any window is
    scored, and no best.json is written."""
    _search(tmp_path, "--model", f"hf:{tiny_llama_dir}", "--data", str(tiny_text_file),
            "--target-ppl", "1e6", "--max-size-mib", "0.0001", "--trials", "3", "--study", "s")
    folder = tmp_path / "out" / "s"
    rows = _finished(folder)
    assert len(rows) == 3
    assert all(r["state"] == "PRUNED" and r["metrics"]["fraction"] == 0 for r in rows)
    assert all(r["metrics"]["latency_ms"] > 0 for r in rows)   # predicted, pruned or not
    assert not (folder / "best.json").exists()
