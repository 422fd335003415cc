"""`autoq search --minimize size|latency`: the knapsack's resource is the objective's
per-option cost (bits, or the latency model's seconds), a size study proposes exactly
what it proposed before the choice existed, and a latency study's front and best.json
follow the predicted time (with a fixed synthetic latency table: no timing here)."""

from __future__ import annotations

import json
import math
import random

import optuna
import pytest
from typer.testing import CliRunner

from autoq.serve import latency
from autoq import study as contract
from autoq.cli import app
from autoq.pipeline.evaluator import EvalSettings
from autoq.models.kinds import KINDS
from autoq.serve.latency import LatencyModel, layer_key
from autoq.quant import LayerConfig, label_of
from autoq.search import knapsack
from autoq.search import prior as priors
from autoq.search import SAMPLERS
from autoq.search.sampler import SamplerInputs, SensitivitySampler, inputs_for, propose
from autoq.search.session import SearchSettings, study_name
from autoq.search.space import Choice
from autoq.metrics import Target

runner = CliRunner()
Q8, Q4, Q3 = LayerConfig(8, 64), LayerConfig(4, 64), LayerConfig(3, 64)


# ---- a size study: the same trials as before --minimize existed ---------------------------
OPTS = (None, Q8, Q4, Q3, LayerConfig(2, 64))
LOSS = {"fp": 0.0, "8:64": 0.002, "4:64": 0.05, "3:64": 0.2, "2:64": 1.0}


def size_problem(capped: bool):
    """14 layers (two in one choice) of random shapes and sensitivities; true losses off
    the predicted ones by a random factor per layer; optionally a size cap that binds."""
    rng = random.Random(7)
    names = [f"l{i}" for i in range(14)]
    shapes = {n: (rng.choice([64, 128, 256]), rng.choice([64, 128])) for n in names}
    choices = [Choice(n, (n,), OPTS) for n in names[:12]] + [Choice("pair", tuple(names[12:]),
                                                                    OPTS)]
    sens = {"layers": {n: {k: w * v for k, v in LOSS.items()} for n in names
                       for w in [rng.uniform(0.1, 2.0)]}}
    true = {n: rng.uniform(0.5, 2.0) for n in names}
    fp_mib = sum(a * b for a, b in shapes.values()) * 4 / 2**20 + 0.01
    q4_mib = sum(a * b * 4.5 / 8 for a, b in shapes.values()) / 2**20 + 0.01
    baselines = {"fp": {"ppl": 20.0, "size_mib": fp_mib}, "4:64": {"ppl": 20.0 * math.exp(0.5)}}
    target = Target("ppl", 20.0 * math.exp(0.4), max_size_mib=q4_mib if capped else None)
    return choices, shapes, sens, baselines, target, true


def size_study_trials(capped: bool, trials: int = 12, n_prior: int = 4, seed: int = 3):
    """The configs of a seeded size study, set up as `autoq.search.run.prepare` does."""
    choices, shapes, sens, baselines, target, true = size_problem(capped)
    prior = priors.build(choices, shapes, sens, baselines, target, 32.0)
    study = optuna.create_study(directions=["minimize", "minimize"])
    priors.enqueue(study, prior, n_prior)
    study.sampler = SAMPLERS["sensitivity"](inputs_for(prior, target, seed, n_prior))

    def objective(trial):
        labels = {c.param: trial.suggest_categorical(c.param, c.labels) for c in choices}
        loss = sum(sens["layers"][n][labels[c.param]] * true[n] for c in choices for n in c.layers)
        trial.set_user_attr(contract.METRICS, {"ppl": 20.0 * math.exp(loss)})
        return sum(prior.bits[p][o] for p, o in labels.items()), loss

    study.optimize(objective, n_trials=trials)
    return [",".join(t.params[c.param] for c in choices) for t in study.trials]


# recorded from the code before --minimize existed (commit f47e32e): 4 prior trials, then
# the sensitivity sampler (seed 3), without and with a size cap; re-recorded when 3-bit
# sizes became exact (2be9d48: LayerConfig.stored_bits, 10 values a word), which moved
# the knapsack's first plan (l11 4:64 instead of 3:64) and what the sampler built on it
BEFORE = {
    False: ["4:64,4:64,4:64,4:64,4:64,8:64,4:64,8:64,4:64,8:64,4:64,4:64,8:64",
            "4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,8:64,4:64,3:64,8:64",
            "4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,8:64,4:64,3:64,4:64",
            "fp,fp,fp,fp,fp,fp,fp,fp,fp,fp,fp,fp,fp",
            "4:64,4:64,4:64,8:64,8:64,4:64,4:64,8:64,4:64,8:64,4:64,3:64,8:64",
            "8:64,4:64,4:64,4:64,4:64,8:64,4:64,8:64,4:64,8:64,4:64,4:64,8:64",
            "4:64,4:64,4:64,4:64,8:64,4:64,4:64,8:64,4:64,8:64,4:64,4:64,8:64",
            "4:64,4:64,4:64,4:64,8:64,8:64,4:64,8:64,4:64,8:64,4:64,3:64,8:64",
            "4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,8:64,8:64,4:64,4:64,8:64",
            "4:64,4:64,8:64,4:64,4:64,8:64,8:64,8:64,4:64,8:64,4:64,4:64,8:64",
            "4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,2:64,4:64",
            "4:64,4:64,4:64,4:64,4:64,8:64,4:64,8:64,8:64,8:64,4:64,4:64,8:64"],
    True: ["4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,4:64,4:64,3:64,4:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,3:64,4:64",
           "2:64,2:64,2:64,2:64,2:64,2:64,2:64,2:64,2:64,2:64,2:64,2:64,2:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,3:64,4:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,4:64,4:64,2:64,4:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,8:64,4:64,2:64,4:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,2:64,8:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,2:64,4:64",
           "3:64,2:64,2:64,2:64,2:64,3:64,2:64,4:64,2:64,4:64,2:64,2:64,4:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,2:64,8:64",
           "3:64,3:64,3:64,3:64,3:64,4:64,3:64,4:64,3:64,4:64,2:64,2:64,4:64",
           "4:64,4:64,4:64,4:64,4:64,4:64,4:64,8:64,4:64,4:64,4:64,2:64,8:64"],
}


@pytest.mark.parametrize("capped", [False, True])
def test_a_seeded_size_study_gives_the_same_trials_as_before(capped):
    assert size_study_trials(capped) == BEFORE[capped]
    choices, shapes, sens, baselines, target, _ = size_problem(capped)
    prior = priors.build(choices, shapes, sens, baselines, target, 32.0)
    assert prior.resource == prior.bits   # the knapsack's resource is the size
    max_cost = prior.budget / prior.scale  # the prior trials: the knapsack as it always was
    assert priors.configs(prior, 4) == knapsack.prior(prior.costs, prior.bits, 4, max_cost,
                                                      prior.max_bits)


# ---- time costs from a synthetic latency table ----------------------------------------------
SHAPES = {"a": (64, 64), "b": (64, 64), "odd": (128, 64)}
TIMES = {  # seconds x 1e-4 per forward; on gemlite 3-bit falls back to HQQ and is slow
    (64, 64): {"fp": 3.0, "8:64": 2.0, "4:64": 1.0, "3:64": 6.0},
    (128, 64): {"fp": 6.0, "8:64": 4.0, "4:64": 5.0, "3:64": 12.0},  # its 4-bit: slower than 8
}
SENS = {"layers": {n: {"fp": 0.0, "8:64": 0.01, "4:64": 0.1, "3:64": 0.4} for n in SHAPES}}


def gemlite_table() -> LatencyModel:
    table = {}
    for (fin, fout), row in TIMES.items():
        for cfg in (None, Q8, Q4, Q3):
            served = latency.served_by(cfg, fin, fout, "gemlite")
            table[layer_key(fin, fout, cfg, served, (1, 1))] = row[label_of(cfg)] * 1e-4
    return LatencyModel(table, {"fp": 1e-3}, shapes=dict(SHAPES), backend="gemlite")


def synthetic_prior(objective: str, cap: dict | None = None
                    ) -> tuple[priors.Prior, list[Choice], Target]:
    """The three layers' prior; `cap`: --max-size-mib at exactly that config's size."""
    choices = [Choice(n, (n,), (None, Q8, Q4, Q3)) for n in SHAPES]
    max_mib = None
    if cap is not None:   # the model is 1 MiB, its searched layers 16-bit
        searched = sum(priors.layer_bits(s, None, 16.0) for s in SHAPES.values())
        capped = sum(priors.layer_bits(SHAPES[n], LayerConfig.parse(o), 16.0)
                     for n, o in cap.items())
        max_mib = 1.0 - (searched - capped) / priors.MIB_BITS
    target = Target("ppl", 20.0 * math.exp(0.25), max_size_mib=max_mib)
    baselines = {"fp": {"ppl": 20.0, "size_mib": 1.0}, "4:64": {"ppl": 20.0 * math.exp(0.3)}}
    lat = gemlite_table() if objective == "latency" else None
    return priors.build(choices, SHAPES, SENS, baselines, target, 16.0, lat), choices, target


def test_time_costs_are_the_layer_times_and_a_fallback_is_priced_as_served():
    lat = gemlite_table()
    assert latency.served_by(Q3, 64, 64, "gemlite") == "hqq"   # 3-bit: not gemlite's
    p, choices, _ = synthetic_prior("latency")
    for c in choices:
        for cfg, label in zip(c.options, c.labels):
            assert p.resource[c.param][label] == pytest.approx(
                lat.layer_time(c.param, cfg) + lat.rest_share(c.param, cfg))
    # one rest term measured: every option of a layer carries the same share of it
    assert lat.rest_share("a", Q3) == lat.rest_share("a", None) > 0
    assert p.resource["a"]["3:64"] - lat.rest_share("a", Q3) == pytest.approx(6e-4)  # HQQ's
    assert p.bits["a"]["3:64"] < p.bits["a"]["4:64"]           # the size is still recorded
    two = Choice("ab", ("a", "b"), (None, Q4))                 # a group: its layers' sum
    assert priors.choice_seconds([two], lat)["ab"]["4:64"] == pytest.approx(
        2e-4 + lat.rest_share("a", Q4) + lat.rest_share("b", Q4))


def test_the_knapsack_prefers_the_faster_options_under_latency():
    size, _, _ = synthetic_prior("size")
    fast, _, _ = synthetic_prior("latency")
    smallest = knapsack.hull(size.costs, size.resource)[-1]
    fastest = knapsack.hull(fast.costs, fast.resource)[-1]
    assert smallest == {"a": "3:64", "b": "3:64", "odd": "3:64"}
    assert fastest == {"a": "4:64", "b": "4:64", "odd": "8:64"}
    latency_hull = knapsack.hull(fast.costs, fast.resource)
    assert all(c["odd"] != "4:64" and "3:64" not in c.values() for c in latency_hull)
    # the prior trials: the smallest / fastest config predicted to meet the target is one
    edges = {}
    for name, p in (("size", size), ("latency", fast)):
        max_cost = p.budget / p.scale
        ok = [c for c in priors.configs(p, 4) if knapsack.totals(c, p.costs, p.resource)[0]
              <= max_cost]
        edges[name] = min(ok, key=lambda c: knapsack.totals(c, p.costs, p.resource)[1])
    assert edges["size"]["odd"] == "4:64"     # the biggest layer, so the most bits saved
    assert edges["latency"] == {"a": "4:64", "b": "4:64", "odd": "8:64"}
    assert all(c["odd"] in ("fp", "8:64") for c in priors.configs(fast, 4))


def test_the_sampler_proposes_the_fastest_config_meeting_the_budget():
    size, _, _ = synthetic_prior("size")
    fast, _, _ = synthetic_prior("latency")
    rng = random.Random(0)
    loose = 10.0   # any config meets it: the smallest / fastest
    assert propose(rng, size.costs, size.resource, loose, None, 0.0) == \
        {"a": "3:64", "b": "3:64", "odd": "3:64"}
    assert propose(rng, fast.costs, fast.resource, loose, None, 0.0, fast.bits) == \
        {"a": "4:64", "b": "4:64", "odd": "8:64"}
    # a size cap (bits) that no config of the time hull fits (odd must leave 8-bit): the
    # resource takes a little of the bits, and the proposal is a fast config that fits
    capped, _, _ = synthetic_prior("latency", cap={"a": "4:64", "b": "4:64", "odd": "4:64"})
    assert capped.max_bits == pytest.approx(
        knapsack.totals({"a": "4:64", "b": "4:64", "odd": "4:64"}, fast.costs, fast.bits)[1])
    assert capped.resource != fast.resource
    cfg = propose(rng, capped.costs, capped.resource, loose, capped.max_bits, 0.0, capped.bits)
    assert knapsack.totals(cfg, capped.costs, capped.bits)[1] <= capped.max_bits
    assert cfg == {"a": "4:64", "b": "4:64", "odd": "4:64"}   # the fastest that fits
    assert all(knapsack.totals(c, capped.costs, capped.bits)[1] <= capped.max_bits
               for c in priors.configs(capped, 4))


@pytest.mark.parametrize("objective", ["size", "latency"])
def test_a_latency_studys_sampler_never_picks_a_dominated_slow_option(objective):
    p, choices, target = synthetic_prior(objective)
    sampler = SensitivitySampler(inputs_for(p, target, 0, 2))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    priors.enqueue(study, p, 2)   # both ends of the hull, then the sampler

    def run(trial):
        labels = {c.param: trial.suggest_categorical(c.param, c.labels) for c in choices}
        loss = knapsack.totals(labels, p.costs, p.resource)[0]
        trial.set_user_attr(contract.METRICS, {"ppl": 20.0 * math.exp(1.5 * loss)})
        return knapsack.totals(labels, p.costs, p.resource)[1], loss

    study.optimize(run, n_trials=10)
    used = {(par, o) for t in study.trials for par, o in t.params.items()}
    slow = {("odd", "4:64"), ("a", "3:64"), ("b", "3:64"), ("odd", "3:64")}
    if objective == "latency":
        assert not used & slow
    else:
        assert used & slow   # by size, 3-bit is the smallest and gets tried


# ---- the study contract ------------------------------------------------------------------
def test_front_and_best_follow_the_objective_key():
    items = [("small", {"size_mib": 10, "latency_ms": 9.0, "ppl": 20}),
             ("fast", {"size_mib": 12, "latency_ms": 5.0, "ppl": 20}),
             ("fast-worse", {"size_mib": 11, "latency_ms": 5.0, "ppl": 25}),
             ("bad", {"size_mib": 8, "latency_ms": 4.0, "ppl": 40})]
    target = Target("ppl", 30.0)
    assert contract.objective_key("latency") == "latency_ms"
    assert contract.objective_key("size") == contract.objective_key(None) == "size_mib"
    assert contract.best(items, target, x=contract.objective_key("latency")) == "fast"
    assert contract.best(items, target, x=contract.objective_key("size")) == "small"
    assert contract.front(items, target, x="latency_ms") == ["bad", "fast"]


def test_a_latency_studys_default_name_says_so():
    s = SearchSettings(eval=EvalSettings(model="llama"), target=14.0, metric="ppl")
    assert study_name(s, "wikitext2") == "llama-wikitext2-ppl14"
    assert study_name(SearchSettings(eval=EvalSettings(model="llama"), target=14.0,
                                     metric="ppl", minimize="latency"), "wikitext2") == \
        "llama-wikitext2-ppl14-latency"


def test_minimize_is_checked_before_anything_loads(tmp_path, tiny_llama_dir):
    result = runner.invoke(app, ["search", "--model", f"hf:{tiny_llama_dir}", "--target-ppl", "14",
                                 "--minimize", "speed", "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2 and "--minimize 'speed' is not one of size, latency" in \
        result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


# ---- end to end: a latency search on the tiny Llama ---------------------------------------
SPACE = """format: autoq.space/1
options: [null, "8:32", "4:32", "2:32"]
groups:
  - {name: attn, match: 'self_attn\\.'}
  - {name: mlp, match: 'mlp\\.', per_layer: true}
baselines: ["4:32"]
"""
SLOWDOWN = {None: 4.0, 8: 2.0, 4: 1.0, 2: 3.0}   # 2-bit priced as a slow (fallback) kernel


@pytest.fixture
def fixed_latency(monkeypatch):
    """A deterministic latency table: a forward takes (in x out) ns x SLOWDOWN; a lookup
    and the rest term are constants (nothing is timed)."""
    def layer(fin, fout, cfg, served, *a, **k):
        return fin * fout * 1e-9 * SLOWDOWN[cfg.nbits if cfg else None]

    monkeypatch.setattr(latency, "bench_layer", layer)
    monkeypatch.setattr(latency, "bench_lookup", lambda *a, **k: 1e-6)
    monkeypatch.setattr(type(KINDS["lm"]), "seconds", lambda *a, **k: 0.05)


def test_a_latency_search_minimises_predicted_time_and_remeasures_the_front(
        tmp_path, tiny_llama_dir, tiny_text_file, fixed_latency):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    common = ["search", "--model", f"hf:{tiny_llama_dir}", "--data", str(tiny_text_file),
              "--seq-len", "32", "--limit", "4", "--target-kld", "10", "--space", str(space),
              "--out", str(tmp_path / "out"), "--study", "s", "--trials", "5",
              "--prior-trials", "3", "-q"]
    result = runner.invoke(app, [*common, "--minimize", "latency", "--measure-front", "1",
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    folder = tmp_path / "out" / "s"
    assert out["objective"] == "latency"
    assert json.loads((folder / "study.json").read_text())["objective"] == "latency"
    pareto = json.loads((folder / "pareto.json").read_text())
    assert pareto["objective"] == "latency"

    rows = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(done) == 5 and all(r["feasible"] for r in done)   # every config meets it
    assert all("latency_ms" in r["metrics"] and "size_mib" in r["metrics"] for r in done)
    # the search learnt the 2-bit kernels are slow: no trial uses them (by size, 2-bit is
    # the smallest and the prior would start there)
    assert all((cfg or {}).get("nbits") != 2 for r in rows for cfg in r["layers"].values())
    values = {t.number: t.values[0] for t in optuna.load_study(
        study_name="s", storage=f"sqlite:///{folder}/study.db").get_trials()}
    assert all(values[r["number"]] == r["metrics"]["latency_ms"] for r in done)

    best = json.loads((folder / "best.json").read_text())
    fastest = min(r["metrics"]["latency_ms"] for r in done)
    assert best["metrics"]["latency_ms"] == pytest.approx(fastest)
    assert out["best"]["number"] == min((r for r in done), key=lambda r: (
        r["metrics"]["latency_ms"], r["metrics"]["kld"], r["number"]))["number"]
    points = [(e["metrics"]["latency_ms"], e["metrics"]["kld"]) for e in pareto["front"]]
    assert len(points) >= 2 and points == sorted(points)   # fastest first ...
    assert all(a[1] > b[1] for a, b in zip(points, points[1:]))   # ... then each closer to fp
    for r in done:                       # no trial dominates a front config
        m = r["metrics"]
        assert not any(m["latency_ms"] <= x and m["kld"] <= y and (m["latency_ms"], m["kld"])
                       != (x, y) for x, y in points)
    # --measure-front 1: the best config's speed measured, its prediction kept
    measured = [e for e in pareto["front"] if e["metrics"]["speed_source"] == "measured"]
    assert [e["number"] for e in measured] == [best["trial"]]
    m = measured[0]["metrics"]
    assert m["tokens_per_s"] > 0 and m["tokens_per_s_predicted"] == pytest.approx(
        1e3 / m["latency_ms"])
    assert best["metrics"]["speed_source"] == "measured"
    assert all(e["metrics"]["speed_source"] == "predicted" for e in pareto["front"]
               if e not in measured)

    again = runner.invoke(app, [*common, "--minimize", "size"])   # the same study, by size
    assert again.exit_code == 2 and "objective='latency'" in again.output

    # the report reads the study (the objective in study.json, latency_ms per trial); its
    # Pareto table is pareto.json's front, fastest first
    shown = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "report"),
                                "--format", "md"])
    assert shown.exit_code == 0, shown.output
    text = (tmp_path / "report" / "report.md").read_text()
    at = [text.index(e["plan"]) for e in pareto["front"]]
    assert at == sorted(at)


def test_the_sensitivity_sampler_spends_no_trial_on_a_repeat_in_a_small_space():
    """Three choices of three options (27 plans): once every perturbed knapsack lands on a
    plan the study has, the sampler steps to an unseen neighbour instead."""
    costs = {p: {"8:64": 0.01 * w, "4:64": 0.1 * w, "3:64": 0.4 * w}
             for p, w in (("a", 1.0), ("b", 2.0), ("c", 0.5))}
    bits = {p: {"8:64": 8.5e4, "4:64": 4.5e4, "3:64": 3.7e4} for p in costs}
    inputs = SamplerInputs(costs, bits, budget=0.3, loss_of=lambda t: t.values[0], scale=1.0,
                           max_bits=None, seed=0, population=4)
    study = optuna.create_study(sampler=SAMPLERS["sensitivity"](inputs))
    study.optimize(lambda t: sum(costs[p][t.suggest_categorical(p, list(costs[p]))]
                                 for p in costs), n_trials=20)
    plans = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(plans)) == len(plans)
