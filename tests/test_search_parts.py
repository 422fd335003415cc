"""The search's pure parts, one at a time: the target, the study contract (front, best,
overlay, legacy keys), the prior's loss scale and size cap, early-stopping decisions,
and which front configs get their speed measured."""

from __future__ import annotations

import math

import pytest

from autoq import study as contract
from autoq.search.estimate import Estimate
from autoq.quant import LayerConfig
from autoq.search import prior
from autoq.search.finalize import to_measure
from autoq.search.space import Choice
from autoq.metrics import Target

PPL = Target("ppl", 30.0)
ACC = Target("accuracy", 0.9, higher_is_better=True, max_size_mib=100.0)


# ---- the target ------------------------------------------------------------------------
def test_target_meets_quality_and_size():
    assert PPL.meets({"ppl": 30.0}) and not PPL.meets({"ppl": 30.01})
    assert not PPL.meets({"ppl": math.nan}) and not PPL.meets({}) and not PPL.meets({"ppl": True})
    assert ACC.meets({"accuracy": 0.95, "size_mib": 99}) and not ACC.meets({"accuracy": 0.95,
                                                                             "size_mib": 101})
    assert not ACC.meets({"accuracy": 0.95})   # capped, and the size is unknown
    assert Target("ppl", None).meets({"ppl": 1e9}) and Target("ppl", None).text() == "no target"
    assert PPL.text() == "ppl ≤ 30.00" and ACC.text() == "accuracy ≥ 90.00%"  # one format: autoq.metrics


def test_target_constraints_are_feasible_when_not_positive():
    assert PPL.constraints({"ppl": 29.0}) == {"quality": -1.0}
    assert ACC.constraints({"accuracy": 0.8, "size_mib": 120})["size"] == 20
    assert ACC.constraints({"accuracy": 0.8})["quality"] == pytest.approx(0.1)
    assert PPL.constraints({"ppl": math.inf})["quality"] > 0   # overflow: infeasible


def test_target_decides_only_when_the_interval_is_on_one_side():
    assert PPL.decide((28.0, 29.9)) == "feasible"
    assert PPL.decide((30.1, 35.0)) == "infeasible"
    assert PPL.decide((29.0, 31.0)) is None
    assert ACC.decide((0.91, 0.95)) == "feasible" and ACC.decide((0.5, 0.89)) == "infeasible"
    assert Target("ppl", None).decide((1.0, 2.0)) is None  # no target: never stop early


def test_early_stopping_judges_from_the_estimate_interval():
    # mean NLL log(29) +- 3.5 SE: wholly under log(30) -> feasible
    est = Estimate(math.log(29.0), 0.005, "fp", seen=10, total=40, df=9)
    assert PPL.decide(est.interval(math.exp)) == "feasible"
    wide = Estimate(math.log(29.0), 0.05, "fp", seen=10, total=40, df=9)
    assert PPL.decide(wide.interval(math.exp)) is None


def test_target_loss_is_in_the_sensitivity_units():
    assert PPL.loss(33.0, 30.0) == pytest.approx(math.log(1.1))
    assert ACC.loss(0.85, 0.9) == pytest.approx(0.05)
    assert Target("kld", 0.01).loss(0.02, 0.0) == pytest.approx(0.02)
    assert PPL.loss(math.nan, 30.0) is None and PPL.loss(0.0, 30.0) is None


# ---- the study contract ----------------------------------------------------------------
def test_a_target_carried_to_another_split_keeps_its_loss_against_fp():
    there = PPL.carried(20.0, 25.0)          # +50% over fp 20 on search: +50% over 25
    assert there.value == pytest.approx(37.5) and there.loss(37.5, 25.0) == \
        pytest.approx(PPL.loss(30.0, 20.0))
    assert ACC.carried(0.95, 0.93).value == pytest.approx(0.88)   # a 5-point drop either way
    assert ACC.carried(0.95, 0.93).max_size_mib == 100.0
    kld = Target("kld", 0.05)
    assert kld.carried(0.0, 0.0) is kld and PPL.carried(None, 25.0) is PPL


def test_front_and_best_are_the_same_rule_for_everyone():
    items = [("a", {"size_mib": 10, "ppl": 40}), ("b", {"size_mib": 12, "ppl": 31}),
             ("c", {"size_mib": 12, "ppl": 35}), ("d", {"size_mib": 20, "ppl": 29}),
             ("e", {"size_mib": 20, "ppl": 29}), ("f", {"size_mib": 9})]
    assert contract.front(items, PPL) == ["a", "b", "d", "e"]   # ties kept, smallest first
    assert contract.best(items, PPL) == "d"                     # smallest meeting ppl <= 30
    numbers = {"d": 7, "e": 3}
    assert contract.best(items, PPL, number_of=numbers.get) == "e"   # tie: the lower trial
    assert contract.best(items, Target("ppl", 20.0)) is None


def test_overlay_completes_a_trial_with_rescored_and_measured_metrics():
    stored = {"ppl": 30.5, "fraction": 0.4, "tokens_per_s": 10.0, "speed_source": "predicted"}
    full = {"metrics": {"ppl": 30.2, "fraction": 1.0}, "units": [1.0]}
    speed = {"tokens_per_s": 12.0, "speed_source": "measured"}
    assert contract.overlay(stored, full, speed) == {
        "ppl": 30.2, "fraction": 1.0, "tokens_per_s": 12.0, "speed_source": "measured"}
    assert contract.overlay(stored) == stored


def test_legacy_attribute_keys_are_still_read():
    assert contract.attr({"metrics": {"ppl": 1}}, contract.METRICS) == {"ppl": 1}
    assert contract.attr({contract.METRICS: 2, "metrics": 1}, contract.METRICS) == 2
    assert contract.origin({"origin": "seed"}) == "prior"
    assert contract.origin({}) == "sampler"


# ---- the prior ---------------------------------------------------------------------------
SENS = {"layers": {"a": {"fp": 0.0, "4:64": 0.02, "8:64": 0.001},
                   "b": {"fp": 0.0, "4:64": 0.08, "8:64": 0.004}}}


def test_loss_scale_is_the_median_measured_per_predicted_loss():
    baselines = {"fp": {"ppl": 20.0}, "4:64": {"ppl": 20.0 * math.exp(0.2)},
                 "8:64": {"ppl": 20.0 * math.exp(0.001)}}
    # 4:64: 0.2 / 0.1 = 2; 8:64: 0.001 / 0.005 = 0.2 -> the median of two is the upper one
    assert prior.loss_scale(baselines, SENS, PPL) == pytest.approx(2.0)
    assert prior.loss_scale(baselines, SENS, ACC) is None   # no accuracy measured
    accuracy = {"fp": {"accuracy": 0.9}, "4:64": {"accuracy": 0.8}}  # a drop of 0.1 / 0.1
    assert prior.loss_scale(accuracy, SENS, ACC) == pytest.approx(1.0)
    kld = {"fp": {"kld": 0.0}, "4:64": {"kld": 0.05}, "8:64": {"kld": 0.0005}}
    assert prior.loss_scale(kld, SENS, Target("kld", 0.01)) == pytest.approx(0.5)
    assert prior.loss_scale({"4:64": {"ppl": 25.0}}, SENS, PPL) is None   # no fp
    better = {"fp": {"ppl": 20.0}, "4:64": {"ppl": 19.0}}
    assert prior.loss_scale(better, SENS, PPL) is None   # nothing worse than fp to fit


def test_max_choice_bits_leaves_the_unsearched_part_out():
    shapes = {"a": (64, 32), "b": (64, 32), "c": (64, 32)}
    choices = [Choice("a", ("a",), (None, LayerConfig(4, 64)))]
    fp_mib = 3 * 64 * 32 * 4 / 2**20        # three fp32 layers, nothing else
    bits = prior.max_choice_bits(choices, shapes, fp_mib, fp_mib, 32.0)
    assert bits == pytest.approx(64 * 32 * 32)   # the whole model size: "a" may stay fp
    assert prior.max_choice_bits(choices, shapes, fp_mib, None, 32.0) is None
    assert prior.max_choice_bits(choices, shapes, None, 1.0, 32.0) is None


def test_a_tied_pair_is_one_choice_whose_matrix_counts_once():
    shapes = {"embed": (64, 100), "head": (64, 100), "a": (64, 32)}
    tied = Choice("embed", ("embed", "head"), (None, LayerConfig(4, 64)), tied=("head",))
    assert tied.stored == ("embed",)
    sens = {"layers": {n: {"fp": 0.0, "4:64": 1.0} for n in shapes}}
    costs, bits = prior.costs_and_bits([tied], shapes, sens, 16.0)
    assert bits["embed"]["4:64"] == pytest.approx(64 * 100 * 4.5)   # one matrix
    assert costs["embed"]["4:64"] == pytest.approx(2.0)   # its error reaches both uses
    fp_mib = (64 * 100 + 64 * 32) * 2 / 2**20   # the tied matrix stored once, 16-bit
    # a cap of the whole fp size leaves the searched matrix its fp bits ("a" is fixed)
    assert prior.max_choice_bits([tied], shapes, fp_mib, fp_mib, 16.0) == \
        pytest.approx(64 * 100 * 16)


def test_budget_only_when_fp_reaches_the_target():
    assert prior.budget(PPL, 28.0) == pytest.approx(math.log(30 / 28))
    assert prior.budget(PPL, 31.0) is None and prior.budget(PPL, None) is None
    assert prior.budget(Target("ppl", None), 28.0) is None


def test_prior_count_defaults_to_a_third_of_the_study():
    assert prior.count(30, None) == 10 and prior.count(3, None) == 2 and prior.count(90, None) == 10
    assert prior.count(30, 4) == 4


# ---- finalising ---------------------------------------------------------------------------
def test_to_measure_takes_the_best_and_spreads_the_rest():
    front = [10, 11, 12, 13, 14, 15]
    assert to_measure(None, front, 12) == set(range(6))
    assert to_measure(10, front, 12) == set(range(6))
    assert to_measure(2, front, 12) == {2, 0}
    assert to_measure(3, front, None) == {0, 2, 5}
    assert to_measure(1, front, 15) == {5}


def test_best_is_on_the_front_when_two_configs_tie_on_size():
    items = [("worse", {"size_mib": 12, "ppl": 29.5}), ("better", {"size_mib": 12, "ppl": 29.0})]
    assert contract.best(items, PPL) == "better" and contract.front(items, PPL) == ["better"]
