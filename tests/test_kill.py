"""kill -9 at random moments, then the same command again: the study still ends with
exactly --trials finished trials, none lost or run twice, every result file whole.

Each run is SIGKILLed after a random number (0-4) of its progress lines plus a
random part of a typical trial's duration, so kills land in start-up, baselines,
sensitivities, seeding and trials whatever the machine's speed; the loop goes on
until KILLS runs were really killed mid-way. The killed runs are forked from a
process that imported torch and autoq once (the imports would otherwise be most of
the test's time); the last, unkilled run is a fresh `python -m autoq.cli`.
Heartbeats are shortened (AUTOQ_HEARTBEAT_S / AUTOQ_GRACE_S) so that a restarted
run retries the dead run's trial after 2 s instead of a minute.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from optuna.trial import TrialState

from autoq.models import load_model
from autoq import study as contract
from searchkit import BUDGET, TARGET, Worker, check_study, env, search_args

KILLS = 20
TRIALS = 20


def phase(worker: Worker) -> str:
    last = worker.events[-1] if worker.events else "start"
    return "trial" if last.startswith("[") else last.split()[0]


@pytest.mark.parametrize("mode, kills, trials", [("target", KILLS, TRIALS),
                                                 ("budget", 8, 24)])
def test_search_survives_kill_9(tmp_path, tiny_llama_dir, tiny_text_file, mode, kills, trials):
    """A target study (sensitivity sampler, statistical early stopping) and a budget study
    (evolve sampler, Optuna's successive-halving pruner)."""
    out = tmp_path / "results"
    args = search_args(tiny_llama_dir, tiny_text_file, out, trials,
                       mode=TARGET if mode == "target" else BUDGET)
    rng = random.Random(6)
    killed_after, trial_seconds, runs = Counter(), [0.5], 0
    while sum(killed_after.values()) < kills:
        runs += 1
        assert runs <= 2 * kills, f"only {dict(killed_after)} kills in {runs - 1} runs"
        worker = Worker(args, env(), tmp_path / f"run{runs}.log")
        worker.wait_for_events(rng.randint(0, 4), timeout=120)
        worker.wait_for_events(10**6, timeout=rng.uniform(0, 1.2) * statistics.median(trial_seconds))
        if worker.kill():
            killed_after[phase(worker)] += 1
        else:  # it finished the study before its kill: TRIALS is too small for KILLS
            assert worker.proc.exitcode == 0, worker.log()
            raise AssertionError(f"the study finished after {dict(killed_after)} kills")
        trial_seconds += [b - a for a, b, line in zip(worker.times, worker.times[1:],
                                                       worker.events[1:]) if line[0] == "["]
    final = Worker(args, env(), tmp_path / "final.log", fresh=True)
    assert final.finish(timeout=300) == 0, final.log()
    assert "finished trials" in final.output()

    shapes = load_model(f"hf:{tiny_llama_dir}").shapes()
    trials = check_study(out / "s", "s", trials, shapes=shapes)
    # the kills hit start-up and running trials, and no config was evaluated twice
    assert killed_after["start"] + killed_after["loading"] >= (3 if mode == "target" else 1), \
        killed_after
    assert killed_after["trial"] >= (3 if mode == "target" else 2), killed_after
    evaluated = [tuple(sorted(t.params.items())) for t in trials
                 if t.state.is_finished() and t.state != TrialState.FAIL
                 and contract.DUPLICATE_OF not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated))
    print(f"{runs} runs, kills after: {dict(killed_after)}; "
          f"{sum(t.state == TrialState.FAIL for t in trials)} trials failed by the kills")
