"""kill -9 at random moments, then the same command again: the study still ends with
exactly --trials finished trials, none lost or run twice, every result file whole.

Each of the KILLS runs is SIGKILLed after a random number (0-4) of its progress
lines plus a random 0-0.8 s, so kills land in start-up, model loading, baselines,
sensitivities, seeding, trials and the final writes, whatever the machine's speed.
Heartbeats are shortened (AUTOQ_HEARTBEAT_S / AUTOQ_GRACE_S) so a restarted run
retries the dead run's trial after 2 s instead of a minute.
"""

from __future__ import annotations

import random
from collections import Counter

from optuna.trial import TrialState

from autoq.models import load_model
from searchkit import Worker, check_study, env, search_args

KILLS = 20
TRIALS = 16


def test_search_survives_kill_9(tmp_path, tiny_llama_dir, tiny_text_file):
    out = tmp_path / "results"
    args = search_args(tiny_llama_dir, tiny_text_file, out, TRIALS)
    rng = random.Random(6)
    killed_after = Counter()
    for _ in range(KILLS):
        worker = Worker(args, env())
        worker.wait_for_events(rng.randint(0, 4), timeout=120)
        if worker.proc.poll() is None:
            worker.wait_for_events(10**6, timeout=rng.uniform(0, 0.8))
        if worker.kill():
            killed_after[(worker.events[-1] if worker.events else "start").split(":")[0][:12]] += 1
        else:
            assert worker.proc.returncode == 0, worker.log()
    final = Worker(args, env())
    assert final.finish(timeout=300) == 0, final.log()
    assert "finished trials" in final.stdout

    shapes = load_model(f"hf:{tiny_llama_dir}").shapes()
    trials = check_study(out / "s", "s", TRIALS, shapes=shapes)
    # the kills hit the start-up and running trials, and nothing was evaluated twice
    assert killed_after["start"] + killed_after["loading mode"] >= 3, killed_after
    assert sum(n for k, n in killed_after.items() if k.startswith("[")) >= 3, killed_after
    evaluated = [tuple(sorted(t.params.items())) for t in trials
                 if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated))
