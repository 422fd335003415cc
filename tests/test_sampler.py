"""The `sensitivity` sampler: recalibration on measured trials, perturbed knapsacks."""

from __future__ import annotations

import random

import optuna
import pytest

from autoq.search import seed as seeding
from autoq.search.sampler import SAMPLERS, SamplerInputs, calibrated_budget, propose


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
    hull = seeding.hull(costs, bits)
    want = seeding.totals(hull[len(hull) // 2], costs, bits)[0]
    cfg = propose(random.Random(0), costs, bits, want, None, sigma=0.0)
    cost, size = seeding.totals(cfg, costs, bits)
    assert cost <= want
    assert size == min(seeding.totals(c, costs, bits)[1] for c in hull
                       if seeding.totals(c, costs, bits)[0] <= want)
    cap = seeding.totals(hull[0], costs, bits)[1] * 0.7
    capped = propose(random.Random(0), costs, bits, 0.0, cap, sigma=0.0)
    assert seeding.totals(capped, costs, bits)[1] <= cap


def _run(sampler_name, trials=16, seed=0):
    """A study whose measured loss is the true (not the predicted) cost; returns the
    smallest size meeting the budget, and the best size possible."""
    costs, true, bits = _toy()
    budget = 0.6 * seeding.totals(seeding.hull(true, bits)[0], true, bits)[0] + \
        0.4 * seeding.totals(seeding.hull(true, bits)[-1], true, bits)[0]

    def loss_of(t):
        return t.user_attrs.get("loss")

    inputs = SamplerInputs(costs, bits, budget, loss_of, scale=1.0, max_bits=None, seed=seed,
                           population=4)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=SAMPLERS[sampler_name](inputs))
    for cfg in seeding.seeds(costs, bits, 3, max_cost=budget):
        study.enqueue_trial(cfg)

    def objective(trial):
        cfg = {p: trial.suggest_categorical(p, list(costs[p])) for p in costs}
        loss, size = seeding.totals(cfg, true, bits)
        trial.set_user_attr("loss", loss)
        return size, loss

    study.optimize(objective, n_trials=trials)
    ok = [t.values[0] for t in study.trials if t.values[1] <= budget]
    return min(ok) if ok else float("inf"), knapsack(true, bits, budget)


def knapsack(costs, bits, budget) -> float:
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


def test_samplers_are_registered_by_name():
    assert {"sensitivity", "nsga2", "random"} <= set(SAMPLERS)
