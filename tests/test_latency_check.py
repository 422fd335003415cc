"""scripts/latency_check.py: the latency model against measurement over a front (issue 23)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from autoq.io import ROOT

spec = importlib.util.spec_from_file_location("latency_check", ROOT / "scripts" / "latency_check.py")
latency_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(latency_check)


def study(folder, rows: list[tuple[float, float]]):
    """A --minimize latency study whose front has (measured, predicted) tokens/s per plan."""
    front = [{"plan": f"pareto-{i:02d}.json", "number": i,
              "metrics": {"tokens_per_s": m, "tokens_per_s_predicted": p, "latency_ms": 1e3 / p,
                          "speed_source": "measured", "size_mib": 1.0, "ppl": 20.0}}
             for i, (m, p) in enumerate(rows)]
    (folder / "pareto.json").write_text(json.dumps({"front": front}))
    (folder / "study.json").write_text(json.dumps({"metric": "ppl", "objective": "latency",
                                                   "speed_key": "tokens_per_s"}))
    return folder


def test_error_and_order(tmp_path):
    r = latency_check.check(study(tmp_path, [(50.0, 55.0), (46.0, 38.0), (45.0, 40.0)]))
    assert r["mean_abs_error"] == pytest.approx((0.1 + 8 / 46 + 1 / 9) / 3)
    assert r["meets"] and r["pairs"] == 3
    # predicted 40 > 38, measured 45 < 46: one pair the other way, noise unknown
    assert [(s["faster_predicted"], s["faster_measured"]) for s in r["pairs_out_of_order"]] == \
        [("pareto-02.json", "pareto-01.json")]
    assert r["pairs_out_of_order"][0]["beyond_noise"] is None and not r["order_kept"]


def test_measured_again_plans_are_judged_at_their_median(tmp_path, monkeypatch):
    folder = study(tmp_path, [(50.0, 55.0), (46.0, 38.0), (45.0, 40.0)])
    again = {"pareto-00.json": [54.0, 56.0], "pareto-01.json": [44.0, 47.0],
             "pareto-02.json": [45.0, 46.5]}
    monkeypatch.setattr(latency_check, "measure_again", lambda d, plans, n: again)
    r = latency_check.check(folder, rounds=2)
    assert [p["median"] for p in r["plans"]] == [54.0, 46.0, 45.0]
    assert r["mean_abs_error_median"] == pytest.approx((1 / 54 + 8 / 46 + 5 / 45) / 3)
    assert r["mean_abs_error"] == pytest.approx((0.1 + 8 / 46 + 1 / 9) / 3)  # first ones
    # 01 measured faster than 02 at the median, but their measurements overlap: noise
    assert r["pairs_out_of_order"][0]["beyond_noise"] is False and r["order_kept"]
    again["pareto-01.json"], again["pareto-02.json"] = [46.5, 47.0], [45.0, 44.0]
    r = latency_check.check(folder, rounds=2)
    assert r["pairs_out_of_order"][0]["beyond_noise"] is True and not r["order_kept"]


def test_the_committed_cpu_front_reads_back_as_committed_and_meets_the_goal():
    r = latency_check.check(ROOT / "results/benchmarks/cpu-serving/latency-front")
    committed = json.loads((ROOT / "results/benchmarks/cpu-serving/latency-check.json").read_text())
    assert r["mean_abs_error"] == pytest.approx(committed["mean_abs_error"])
    assert committed["meets"] == (committed["mean_abs_error_median"] <= 0.15)
    assert committed["meets"] and committed["rounds_again"] >= 1
    assert committed["order_kept"] == all(s["beyond_noise"] is False
                                          for s in committed["pairs_out_of_order"])


def test_a_folder_that_is_no_study_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="not a finished `autoq search` study folder"):
        latency_check.check(tmp_path)
