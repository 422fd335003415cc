"""Estimating the full-data metric from part of the data (`autoq.estimate`)."""

from __future__ import annotations

import math
import random

import pytest

from autoq.search.estimate import Z, estimate


def _windows(n=40, seed=0):
    rng = random.Random(seed)
    return [3.3 + rng.gauss(0, 0.3) for _ in range(n)]   # windows differ a lot in difficulty


def test_all_units_seen_is_exact():
    units = _windows()
    est = estimate(units, len(units), {})
    assert est.mean == pytest.approx(sum(units) / len(units)) and est.se == 0
    lo, hi = est.interval(math.exp)
    assert lo == hi == pytest.approx(math.exp(sum(units) / len(units)))


def test_a_close_reference_predicts_the_rest_and_its_interval_covers_the_truth():
    fp = _windows()
    rng = random.Random(1)
    # a quantized config: a little worse on every window, by a window-dependent amount
    trial = [u + 0.02 + rng.gauss(0, 0.004) for u in fp]
    far = [u + 0.5 + rng.gauss(0, 0.2) for u in fp]          # a coarse config: a worse predictor
    truth = sum(trial) / len(trial)
    est = estimate(trial[:10], 40, {"fp": fp, "3:64": far})
    assert est.reference == "fp" and est.seen == 10
    assert abs(est.mean - truth) < Z * est.se
    assert est.se < 0.005      # the first 10 windows alone would be off by ~0.1 (0.3/sqrt(10))
    naive = sum(trial[:10]) / 10
    assert abs(naive - truth) > abs(est.mean - truth)


def test_no_disagreement_yet_is_not_certainty_for_hits():
    ref = [1.0, 0.0] * 64
    est = estimate(ref[:32], 128, {"fp": ref})      # the same 32 hits as the reference
    assert est.mean == pytest.approx(0.5) and est.se > 0.01


def test_without_a_usable_reference_anything_is_possible():
    est = estimate([3.0, 3.1, 2.9], 40, {"short": [3.0] * 10})  # wrong length: unusable
    assert est.se == math.inf and est.reference == "none"


def test_few_units_widen_the_interval_like_students_t():
    from autoq.search.estimate import Estimate, t_quantile

    assert t_quantile(3.0, math.inf) == 3.0
    assert 4.30 * 0.9 < t_quantile(3.0, 9) < 4.30      # the exact t(0.99865, 9) is 4.30
    narrow = Estimate(0.0, 0.1, "fp", 30, 40).interval(lambda m: m)
    wide = Estimate(0.0, 0.1, "fp", 5, 40, df=4).interval(lambda m: m)
    assert wide[1] - wide[0] > 1.8 * (narrow[1] - narrow[0])
