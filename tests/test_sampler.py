"""The `sensitivity` sampler: recalibration on measured trials, perturbed knapsacks."""

from __future__ import annotations

import random

import optuna
import pytest

from autoq.search import knapsack
from autoq.search import SAMPLERS
from autoq.search.sampler import SamplerInputs, calibrated_budget, propose


def _toy(n=30, seed=0):
    """n layers, options 2/4/8 bits; predicted costs, and true costs that differ by
    a per-layer factor (the additive model is right only roughly)."""
    rng = random.Random(seed)
    costs, true, bits = {}, {}, {}
    for i in range(n):
        w, size = rng.uniform(0.2, 3.0), rng.choice([100, 300])
        costs[f"l{i}"] = {"2": w * 4.0, "4": w * 1.0, "8": w * 0.05}
        f = rng.uniform(0.4, 2.5)
        true[f"l{i}"] = {o: c * f for o, c in costs[f"l{i}"].items()}
        bits[f"l{i}"] = {"2": 2.0 * size, "4": 4.0 * size, "8": 8.0 * size}
    return costs, true, bits


def test_calibrated_budget_uses_the_trials_predicted_nearest_the_target():
    # the model under-predicts by 2x near the target, is right far from it
    pairs = [(1.0, 2.0), (1.2, 2.4), (0.8, 1.6), (10.0, 10.0), (20.0, 20.0)]
    assert calibrated_budget(pairs, budget=2.0, scale=1.0) == pytest.approx(1.0)
    assert calibrated_budget([], budget=2.0, scale=4.0) == pytest.approx(0.5)
    assert calibrated_budget([], budget=2.0, scale=None) is None


def test_propose_without_noise_is_the_smallest_config_under_the_budget():
    costs, _, bits = _toy()
    hull = knapsack.hull(costs, bits)
    want = knapsack.totals(hull[len(hull) // 2], costs, bits)[0]
    cfg = propose(random.Random(0), costs, bits, want, None, sigma=0.0)
    cost, size = knapsack.totals(cfg, costs, bits)
    assert cost <= want
    assert size == min(knapsack.totals(c, costs, bits)[1] for c in hull
                       if knapsack.totals(c, costs, bits)[0] <= want)
    cap = knapsack.totals(hull[0], costs, bits)[1] * 0.7
    capped = propose(random.Random(0), costs, bits, 0.0, cap, sigma=0.0)
    assert knapsack.totals(capped, costs, bits)[1] <= cap


def _study(sampler_name, costs, true, bits, budget, prior_trials, trials, seed=0):
    """A study whose measured loss is the true (not the predicted) cost, started from
    `prior_trials` knapsack configs."""
    inputs = SamplerInputs(costs, bits, budget, lambda t: t.user_attrs.get("loss"), scale=1.0,
                           max_bits=None, seed=seed, population=4)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=SAMPLERS[sampler_name](inputs))
    for cfg in knapsack.prior(costs, bits, prior_trials, max_cost=budget):
        study.enqueue_trial(cfg)

    def objective(trial):
        cfg = {p: trial.suggest_categorical(p, list(costs[p])) for p in costs}
        loss, size = knapsack.totals(cfg, true, bits)
        trial.set_user_attr("loss", loss)
        return size, loss

    study.optimize(objective, n_trials=trials)
    return study


def _run(sampler_name, trials=16, seed=0):
    """The smallest size meeting the budget that the sampler found, and the best size
    possible."""
    costs, true, bits = _toy()
    budget = 0.6 * knapsack.totals(knapsack.hull(true, bits)[0], true, bits)[0] + \
        0.4 * knapsack.totals(knapsack.hull(true, bits)[-1], true, bits)[0]
    study = _study(sampler_name, costs, true, bits, budget, 3, trials, seed)
    ok = [t.values[0] for t in study.trials if t.values[1] <= budget]
    return min(ok) if ok else float("inf"), exact_optimum(true, bits, budget)


def exact_optimum(costs, bits, budget) -> float:
    """The exact smallest size with total cost <= budget (dynamic programming on size)."""
    best = {0.0: 0.0}                      # size -> least cost
    for p in costs:
        nxt: dict[float, float] = {}
        for size, cost in best.items():
            for o in costs[p]:
                s, c = size + bits[p][o], cost + costs[p][o]
                if c < nxt.get(s, float("inf")):
                    nxt[s] = c
        best = nxt
    return min(s for s, c in best.items() if c <= budget)


def test_the_sensitivity_sampler_gets_near_the_true_optimum_where_others_do_not():
    # the seeds alone miss the budget (the model under-predicts the true loss here);
    # recalibrated, perturbed knapsacks land within 10% of the exact optimum in 16 trials
    assert _run("sensitivity", trials=3)[0] == float("inf")
    found, optimum = _run("sensitivity")
    assert found <= optimum * 1.10
    for other in ("random", "nsga2"):
        assert _run(other)[0] > optimum * 1.25


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_proposes_whole_valid_configs(name):
    """After the prior, each registered sampler gives every choice one of its options."""
    costs, true, bits = _toy(n=8)
    study = _study(name, costs, true, bits, 1.0, 2, 8)
    configs = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(configs) == 8
    assert all(set(dict(c)) == set(costs) and all(o in costs[p] for p, o in c) for c in configs)
