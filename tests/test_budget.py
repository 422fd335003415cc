"""Budget mode (`autoq search --max-size-mib S` / `--bits B` with no quality target): the
best quality at a size. The `evolve` sampler never proposes a plan over the budget, a
trial is scored rung by rung (few tokens first, the whole split for the survivors), a
pruned trial is never on a front, a plan is scored once per study, and best.json fits the
budget and is at least as good as the one-shot knapsack plan at that budget."""

from __future__ import annotations

import json
import random

import optuna
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from autoq.cli import app
from autoq.search import SAMPLERS, evolve, knapsack
from autoq.search.fidelity import Rung, rungs_for
from autoq.search.sampler import SamplerInputs

runner = CliRunner()

SPACE = """format: autoq.space/1
options: ["8:32", "4:32", "4:64", "3:32", "2:32"]
groups:
  - {name: embed-head, roles: [embedding, head], per_layer: true, options: [null, "8:32", "4:32"]}
  - {name: blocks, match: 'layers\\.', per_layer: true}
baselines: ["4:32"]
"""


# ---- the sampler, pure --------------------------------------------------------------------
@st.composite
def problems(draw):
    """A random multiple-choice problem (2-12 choices of 2-5 options) and a budget between
    its smallest and its largest plan."""
    n = draw(st.integers(2, 12))
    costs, bits = {}, {}
    for i in range(n):
        k = draw(st.integers(2, 5))
        sizes = sorted(draw(st.lists(st.integers(1, 5000), min_size=k, max_size=k)))  # ties too
        losses = draw(st.lists(st.floats(0.0, 10.0).map(lambda x: round(x, 6)), min_size=k,
                               max_size=k))
        costs[f"c{i}"] = {f"o{j}": losses[j] for j in range(k)}
        bits[f"c{i}"] = {f"o{j}": float(sizes[j]) for j in range(k)}
    lo = sum(min(r.values()) for r in bits.values())
    hi = sum(max(r.values()) for r in bits.values())
    return costs, bits, lo + draw(st.floats(0.0, 1.0)) * (hi - lo)


@settings(max_examples=150, deadline=None)
@given(problems(), st.integers(0, 10**6))
def test_evolve_never_proposes_a_plan_over_the_budget(problem, seed):
    costs, bits, budget = problem
    rng = random.Random(seed)
    # parents of any size (another sampler's trials may be over the budget)
    parents = [{p: rng.choice(list(row)) for p, row in bits.items()} for _ in range(4)]
    start = evolve.EvolveSampler(costs, bits, budget, seed).start
    assert evolve.size(start, bits) <= budget
    for i in range(12):
        cfg = evolve.propose(rng, parents[: i % 5], start, costs, bits, budget)
        assert set(cfg) == set(bits) and all(cfg[p] in bits[p] for p in cfg)
        assert evolve.size(cfg, bits) <= budget


@settings(max_examples=15, deadline=None)
@given(problems(), st.sampled_from(["evolve", "sensitivity"]), st.integers(0, 100))
def test_budget_samplers_stay_under_the_budget_in_a_study(problem, name, seed):
    """Through Optuna (relative sampling, parents from COMPLETE trials, pruned ones too)."""
    costs, bits, budget = problem
    inputs = SamplerInputs(costs, bits, None, lambda t: None, scale=None, max_bits=budget,
                           seed=seed, population=4, at_size=True)
    study = optuna.create_study(direction="minimize", sampler=SAMPLERS[name](inputs))

    def objective(trial):
        cfg = {p: trial.suggest_categorical(p, list(costs[p])) for p in costs}
        assert evolve.size(cfg, bits) <= budget
        if trial.number % 3 == 2:
            raise optuna.TrialPruned()
        return knapsack.totals(cfg, costs, bits)[0]

    study.optimize(objective, n_trials=15)


def test_crossover_and_mutation_spend_what_the_budget_leaves():
    costs = {p: {"2": 4.0 * w, "4": 1.0 * w, "8": 0.1 * w} for p, w in
             (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    bits = {p: {"2": 2.0 * n, "4": 4.0 * n, "8": 8.0 * n} for p, n in
            (("a", 100), ("b", 100), ("c", 300))}
    budget = 2800.0
    rng = random.Random(0)
    a = {"a": "8", "b": "2", "c": "4"}      # 2200 bits: 600 left
    b = {"a": "2", "b": "8", "c": "4"}
    for _ in range(20):
        for cfg in (evolve.mutate(rng, a, costs, bits, budget, 1),
                    evolve.crossover(rng, a, b, costs, bits, budget)):
            size = evolve.size(cfg, bits)
            # no single upgrade fits what is left: the budget is spent
            assert size <= budget and not any(
                size + bits[p][o] - bits[p][cfg[p]] <= budget
                for p in cfg for o in bits[p] if bits[p][o] > bits[p][cfg[p]])


def test_rungs_grow_from_few_tokens_to_the_whole_split():
    assert rungs_for(40, 512) == [Rung(1, 1, None), Rung(4, 4, None), Rung(16, 10, None)]
    assert rungs_for(40, 2048) == [Rung(1, 1, 512), Rung(4, 4, None), Rung(16, 10, None)]
    assert rungs_for(4, 64) == [Rung(1, 1, None)]          # the rest is the whole split
    assert rungs_for(359, None) == [Rung(1, 36, None), Rung(4, 90, None)]   # images: no cut


# ---- end to end on the tiny Llama ----------------------------------------------------------
def _budget_search(tmp_path, model_dir, text, *args):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    result = runner.invoke(app, ["search", "--model", f"hf:{model_dir}", "--data", str(text),
                                 "--seq-len", "32", "--limit", "12", "--space", str(space),
                                 "--out", str(tmp_path / "out"), "--study", "s",
                                 "--measure-front", "0", "-q", *args])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "s"
    rows = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    return folder, rows


def test_budget_mode_best_fits_and_beats_the_one_shot_plan(tmp_path, tiny_llama_dir,
                                                         tiny_text_file):
    folder, rows = _budget_search(tmp_path, tiny_llama_dir, tiny_text_file, "--bits", "4.5",
                                  "--trials", "30")
    info = json.loads((folder / "study.json").read_text())
    assert info["budget_mode"] and info["sampler"] == "evolve" and info["target"] is None
    assert [r["units"] for r in info["fidelity"]["rungs"]] == [1, 3]   # of 12 windows
    budget = info["max_size_mib"]
    assert len(rows) == 30 and {r["state"] for r in rows} == {"COMPLETE", "PRUNED"}
    assert all(r["metrics"]["size_mib"] <= budget for r in rows)   # measured, 3-bit too
    best = json.loads((folder / "best.json").read_text())["metrics"]
    assert best["size_mib"] <= budget and best["fraction"] == 1
    oneshot = json.loads((folder / "oneshot.json").read_text())
    assert set(oneshot) == {"sensitivity@4.5", "single-layer-kl@4.5"}
    assert all(o["metrics"]["size_mib"] <= budget for o in oneshot.values())
    assert best["ppl"] <= oneshot["sensitivity@4.5"]["metrics"]["ppl"]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert best["ppl"] == min(r["metrics"]["ppl"] for r in complete)
    # a pruned candidate is never on the front; every front number is a whole-split one
    pareto = json.loads((folder / "pareto.json").read_text())
    states = {r["number"]: r["state"] for r in rows}
    assert pareto["front"] and pareto["best"] == "best.json"
    for entry in pareto["front"]:
        assert states[entry["number"]] == "COMPLETE" and entry["metrics"]["fraction"] == 1
        assert entry["metrics"]["size_mib"] <= budget
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert pruned and all(r["metrics"]["fraction"] < 1 for r in pruned)
    # no plan is scored twice in a study
    scored = [tuple(sorted(r["layers"].items(), key=str)) for r in rows if "duplicate_of" not in r]
    assert len({json.dumps(s) for s in scored}) == len(scored)
    # a second budget under the same --out: its study holds its own one-shot plans only
    # (the shared cache under out/baselines/ keeps both budgets')
    _budget_search(tmp_path, tiny_llama_dir, tiny_text_file, "--bits", "4", "--trials", "3",
                   "--study", "t")
    other = json.loads((tmp_path / "out" / "t" / "oneshot.json").read_text())
    assert set(other) == {"sensitivity@4", "single-layer-kl@4"}


def test_a_plan_proposed_again_reuses_its_stored_result(tmp_path, tiny_llama_dir, tiny_text_file,
                                                        monkeypatch):
    folder, rows = _budget_search(tmp_path, tiny_llama_dir, tiny_text_file, "--bits", "4.5",
                                  "--trials", "12")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder}/study.db")
    done = {t.number: t for t in study.trials}
    pruned = next(t for t in done.values() if t.state.name == "PRUNED")
    complete = next(t for t in done.values() if t.state.name == "COMPLETE")
    for t in (pruned, complete):
        study.enqueue_trial(t.params)
    from autoq.pipeline.evaluator import Evaluator

    def no_scoring(self, *a, **kw):
        raise AssertionError("a plan scored before was scored again")

    monkeypatch.setattr(Evaluator, "run", no_scoring)
    _, rows = _budget_search(tmp_path, tiny_llama_dir, tiny_text_file, "--bits", "4.5",
                             "--trials", "14", "--one-shot", "none")
    again = {r["number"]: r for r in rows if r["number"] >= 12}
    assert len(again) == 2
    for r in again.values():
        original = done[r["duplicate_of"]]
        assert r["state"] == original.state.name
        assert r["metrics"]["ppl"] == original.user_attrs["autoq:metrics"]["ppl"]
