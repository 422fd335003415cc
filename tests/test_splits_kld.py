"""Numbers a reviewer trusts (issue 14): configs chosen on the search split and reported on
another; KL from the fp model as a target, with early stopping on its units; the
one-shot plans (sensitivity and single-layer KL knapsacks) at their budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoq.cli import app
from autoq.plan import Plan
from autoq.search import knapsack, oneshot
from conftest import write_text

runner = CliRunner()
SPACE = """format: autoq.space/1
options: [null, "8:32", "4:32", "2:32"]
groups:
  - {name: attn, roles: [attn_in, attn_out], per_layer: true}
  - {name: mlp, roles: [mlp_in, mlp_out], per_layer: true}
baselines: ["4:32", "2:32"]
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[Path, Path]:
    """Two different texts: one to search on, one to report on."""
    root = tmp_path_factory.mktemp("splits")
    return write_text(root / "valid.raw", seed=1), write_text(root / "test.raw", seed=2)


def search(tmp_path, model_dir, splits, *args, space: str = SPACE) -> Path:
    (tmp_path / "space.yaml").write_text(space)
    valid, test = splits
    r = runner.invoke(app, ["search", "--model", f"hf:{model_dir}", "--data", str(valid),
                            "--report-data", str(test), "--seq-len", "32", "--limit", "20",
                            "--report-limit", "6", "--space", str(tmp_path / "space.yaml"),
                            "--out", str(tmp_path / "out"), "--study", "s", "-q", *args])
    assert r.exit_code == 0, r.output
    return tmp_path / "out" / "s"


def rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "trials.jsonl").read_text().splitlines()]


def test_plans_are_chosen_on_the_search_split_and_reported_on_the_other(tmp_path,
                                                                        tiny_llama_dir, splits):
    folder = search(tmp_path, tiny_llama_dir, splits, "--target-ppl", "1e6", "--trials", "4",
                    "--prior-trials", "3")
    pareto = json.loads((folder / "pareto.json").read_text())
    assert pareto["front"]
    for entry in pareto["front"]:
        m = Plan.load(folder / entry["plan"]).metrics
        assert "valid.raw" in m["protocol"] and "test.raw" in m["report"]["protocol"]
        assert "6 windows" in m["report"]["protocol"] and m["report"]["fraction"] == 1
        assert m["report"]["ppl"] != m["ppl"] and m["report"]["meets_target"] is True
        quantized = any(c is not None for c in Plan.load(folder / entry["plan"]).layers.values())
        assert (m["kld"] > 0) == quantized and (m["report"]["kld"] > 0) == quantized  # KL too
        # the report number is what `autoq eval --split report` says of the same plan
        again = runner.invoke(app, ["eval", "--plan", str(folder / entry["plan"]), "--data",
                                    str(splits[1]), "--split", "report", "--seq-len", "32",
                                    "--limit", "6", "--kld", "--json", "-q"])
        r = json.loads(again.stdout)
        assert r["ppl"] == pytest.approx(m["report"]["ppl"], rel=1e-6)
        assert r["kld"] == pytest.approx(m["report"]["kld"], rel=1e-5)
    baselines = json.loads((folder / "baselines.json").read_text())
    assert baselines["fp"]["kld"] == 0.0 and baselines["fp"]["report"]["kld"] == 0.0
    assert baselines["4:32"]["report"]["ppl"] > 0


def test_a_resume_on_another_report_protocol_scores_the_report_split_again(tmp_path,
                                                                          tiny_llama_dir, splits):
    args = ("--target-ppl", "1e6", "--trials", "3", "--prior-trials", "2", "--one-shot", "5")
    folder = search(tmp_path, tiny_llama_dir, splits, *args)
    other = search(tmp_path, tiny_llama_dir, splits, *args, "--study", "other")
    first = json.loads((folder / "pareto.json").read_text())["front"]
    folder = search(tmp_path, tiny_llama_dir, splits, *args, "--report-limit", "10")
    front = json.loads((folder / "pareto.json").read_text())["front"]
    assert [e["number"] for e in front] == [e["number"] for e in first]   # no new trials
    baselines = json.loads((folder / "baselines.json").read_text())
    shots = json.loads((folder / oneshot.ONESHOT_FILE).read_text())
    reports = [*(e["metrics"]["report"] for e in front), baselines["fp"]["report"],
               *(e["report"] for e in shots.values())]
    assert all("10 windows" in r["protocol"] for r in reports)
    # the other study, resumed on 10 windows too, takes the baselines scored there
    other = search(tmp_path, tiny_llama_dir, splits, *args, "--study", "other",
                   "--report-limit", "10")
    assert json.loads((other / "baselines.json").read_text())["fp"]["report"] == \
        baselines["fp"]["report"]           # the same entry, not scored again
    fp = baselines["fp"]
    for e in front:   # the target carried to the report split: the same loss against fp
        r = e["metrics"]["report"]
        assert r["target"] == pytest.approx(1e6 * fp["report"]["ppl"] / fp["ppl"])
        assert r["meets_target"] is (r["ppl"] <= r["target"])


def test_a_kld_target_stops_trials_early_on_kl_units(tmp_path, tiny_llama_dir, splits):
    valid, _ = splits
    fp = json.loads(runner.invoke(app, ["eval", "--model", f"hf:{tiny_llama_dir}", "--data",
                                        str(valid), "--seq-len", "32", "--limit", "20",
                                        "--uniform", "4:32", "--kld", "--json", "-q"]).stdout)
    target = fp["kld"] * 1.5     # uniform 4-bit meets it; the 2-bit configs do not
    folder = search(tmp_path, tiny_llama_dir, splits, "--target-kld", str(target),
                    "--trials", "8", "--prior-trials", "4")
    info = json.loads((folder / "study.json").read_text())
    assert info["metric"] == "kld" and info["higher_is_better"] is False
    done = [r for r in rows(folder) if r["state"] in ("COMPLETE", "PRUNED")]
    partial = [r for r in done if r["metrics"]["fraction"] < 1 and "estimate" not in r["metrics"]]
    assert partial, "no trial was decided before the last window"
    for r in partial:
        lo, hi = r["metrics"]["kld_interval"]
        assert 0 <= lo <= r["metrics"]["kld"] <= hi
        assert (r["state"] == "PRUNED") == (lo > target)    # pruned: surely above the target
    best = Plan.load(folder / "best.json")
    assert best.metrics["kld"] <= target and best.metrics["fraction"] == 1


def test_one_shot_plans_fit_their_budgets_and_use_each_signal(tmp_path, tiny_llama_dir, splits):
    folder = search(tmp_path, tiny_llama_dir, splits, "--target-ppl", "1e6", "--trials", "3",
                    "--prior-trials", "2")
    shots = json.loads((folder / oneshot.ONESHOT_FILE).read_text())
    assert {e["signal"] for e in shots.values()} == set(oneshot.SIGNALS)
    for label, e in shots.items():
        assert label == f"{e['signal']}@{e['budget_bits']:g}"
        layers = {n: c for n, c in e["layers"].items() if c is not None}
        assert layers and e["metrics"]["fraction"] == 1 and "report" in e
        assert e["metrics"]["bits_per_weight"] <= e["budget_bits"] + 1e-9
    # what the search wrote, `autoq report` reads: both splits, KL, the gap table
    r = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "rep"), "--format",
                            "md", "-q"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| ppl search | ppl report | KL search | KL report |" in md
    assert "the same loss against fp" in md    # the target the report split was judged by
    assert "One-shot plans against the searched front, at equal size" in md
    assert all(f"| {label} |" in md for label in shots)


def test_one_shot_budgets_count_a_tied_table_once(tmp_path, tiny_llama_dir, splits):
    # the tied embedding/head is one choice of two layers but one matrix: a budget in bits
    # per weight holds for the plan as measured (each matrix once)
    space = SPACE.replace("groups:\n", "groups:\n  - {name: embed-head, roles: [embedding, "
                          "head], per_layer: true}\n")
    folder = search(tmp_path, tiny_llama_dir, splits, "--target-ppl", "1e6", "--trials", "2",
                    "--prior-trials", "1", "--one-shot", "3,5", space=space)
    shots = json.loads((folder / oneshot.ONESHOT_FILE).read_text())
    assert {e["budget_bits"] for e in shots.values()} == {3.0, 5.0}
    for e in shots.values():
        assert e["layers"]["model.embed_tokens"] == e["layers"]["lm_head"]   # kept tied
        assert e["metrics"]["bits_per_weight"] <= e["budget_bits"] + 1e-9
    # filled: a budget is spent up to what one more upgrade would exceed
    assert max(e["metrics"]["bits_per_weight"] for e in shots.values()) > 4.0


def test_one_shot_budgets_are_the_users_and_none_skips_them(tmp_path, tiny_llama_dir, splits):
    search(tmp_path, tiny_llama_dir, splits, "--target-ppl", "1e6", "--trials", "2",
           "--prior-trials", "1", "--one-shot", "5", "--study", "five")
    shots = json.loads((tmp_path / "out" / "five" / oneshot.ONESHOT_FILE).read_text())
    assert {e["budget_bits"] for e in shots.values()} == {5.0}
    search(tmp_path, tiny_llama_dir, splits, "--target-ppl", "1e6", "--trials", "2",
           "--prior-trials", "1", "--one-shot", "none", "--study", "none")
    assert (tmp_path / "out" / "none" / "best.json").exists()
    assert not (tmp_path / "out" / "none" / oneshot.ONESHOT_FILE).exists()


def test_the_best_note_says_whether_the_report_split_meets_the_target(tmp_path, tiny_llama_dir,
                                                                     splits):
    valid, test = splits
    (tmp_path / "space.yaml").write_text(SPACE)
    r = runner.invoke(app, ["search", "--model", f"hf:{tiny_llama_dir}", "--data", str(valid),
                            "--report-data", str(test), "--seq-len", "32", "--limit", "20",
                            "--report-limit", "6", "--space", str(tmp_path / "space.yaml"),
                            "--out", str(tmp_path / "out"), "--target-ppl", "1e6",
                            "--trials", "2", "--prior-trials", "1", "--one-shot", "none",
                            "--json", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    rep = out["best"]["metrics"]["report"]
    assert out["best_note"].endswith(f"report split: ppl {rep['ppl']:.4g}, meets the target "
                                     f"there ({rep['target']:.4g}: the same loss against fp)")
    assert "(search split)" in out["best_note"]


def test_at_budget_is_the_least_loss_config_that_fits():
    costs = {"a": {"2": 4.0, "4": 1.0, "8": 0.1}, "b": {"2": 8.0, "4": 2.0, "8": 0.2}}
    bits = {p: {"2": 200.0, "4": 400.0, "8": 800.0} for p in costs}
    cfg = knapsack.at_budget(costs, bits, 1200.0)
    assert cfg == {"a": "4", "b": "8"}             # the sensitive one gets the bits
    assert knapsack.at_budget(costs, bits, 399.0) is None
    assert knapsack.at_budget(costs, bits, 1600.0) == {"a": "8", "b": "8"}


def test_at_budget_spends_the_budget_between_the_hull_points():
    # one big choice ("t", a tied table) and two small ones: the hull goes from (t 4, a 8,
    # b 4) at 1100 bits straight to t at 8 (1900), so at 1200 the hull alone leaves 100
    costs = {"t": {"4": 1.0, "8": 0.0}, "a": {"4": 0.5, "8": 0.1}, "b": {"4": 0.2, "8": 0.1}}
    bits = {"t": {"4": 800.0, "8": 1600.0}, "a": {"4": 100.0, "8": 200.0},
            "b": {"4": 100.0, "8": 200.0}}
    sizes = sorted(knapsack.totals(c, costs, bits)[1] for c in knapsack.hull(costs, bits))
    assert 1200.0 not in sizes and 1100.0 in sizes
    assert knapsack.at_budget(costs, bits, 1200.0) == {"t": "4", "a": "8", "b": "8"}
    assert knapsack.at_budget(costs, bits, 1199.0) == {"t": "4", "a": "8", "b": "4"}
