"""The storage layer and the trial budget, without a model: stale trials of dead
workers are failed and re-enqueued (a bounded number of times), the budget check lets
at most `total` trials run, a seed enqueued twice runs once, and bad URLs are one
sentence."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from autoq.errors import UserError
from autoq import study as contract
from autoq.search import storage as store
from autoq.search.trial import SurplusTrial, budget_ok

DIST = {"attn": CategoricalDistribution(["keep", "4:32"])}


@pytest.fixture(params=["sqlite", "journal"])
def study(request, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db" if request.param == "sqlite" else \
        f"journal:///{tmp_path}/s.log"
    return optuna.create_study(storage=store.open_storage(url), study_name="s",
                               directions=["minimize", "minimize"])


def running(study, params: dict, age: float, beat: bool = True, origin: str = "sampler"):
    """A RUNNING trial as a worker leaves it: last heartbeat `age` seconds ago, or
    (beat=False) started `age` seconds ago and killed before its first heartbeat."""
    frozen = optuna.trial.create_trial(
        state=TrialState.RUNNING, params=params, distributions={k: DIST[k] for k in params},
        user_attrs={contract.ORIGIN: origin},
        system_attrs={contract.HEARTBEAT: time.time() - age} if beat else {})
    frozen.datetime_start = datetime.now() - timedelta(seconds=age)
    study.add_trial(frozen)
    return study.get_trials(deepcopy=False)[-1]


def test_stale_trials_are_failed_and_enqueued_again(study):
    live = running(study, {"attn": "keep"}, age=1)
    dead = running(study, {"attn": "4:32"}, age=100, origin="seed")
    young = running(study, {"attn": "keep"}, age=1, beat=False)
    orphan = running(study, {}, age=100, beat=False)  # no config yet: nothing to retry
    assert store.fail_stale(study, grace=60) == [dead.number, orphan.number]
    trials = study.get_trials(deepcopy=False)
    assert trials[live.number].state == trials[young.number].state == TrialState.RUNNING
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[dead.number].user_attrs[contract.FAIL_REASON].startswith("worker died: no heartbeat")
    copy = trials[-1]
    assert len(trials) == 5 and copy.state == TrialState.WAITING and copy.params == dead.params
    assert copy.user_attrs == {contract.ORIGIN: "prior", contract.RETRY_OF: dead.number}
    assert store.fail_stale(study, grace=60) == []  # once only


def test_a_config_is_retried_at_most_max_retry_times(study):
    running(study, {"attn": "4:32"}, age=100)
    for attempt in range(store.MAX_RETRY + 1):
        store.fail_stale(study, grace=60)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if attempt < store.MAX_RETRY:
            assert len(waiting) == 1
            trial_id = waiting[0]._trial_id  # it runs, and its worker dies too
            assert study._storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            study._storage.set_trial_system_attr(trial_id, contract.HEARTBEAT, time.time() - 100)
        else:
            assert waiting == []
    assert len(study.get_trials(states=(TrialState.FAIL,))) == store.MAX_RETRY + 1


def test_budget_lets_at_most_total_trials_run(study):
    trials = [study.ask() for _ in range(3)]
    budget_ok(study, trials[0], 2)
    budget_ok(study, trials[1], 2)
    with pytest.raises(SurplusTrial):
        budget_ok(study, trials[2], 2)
    study.tell(trials[2], state=TrialState.FAIL)
    study.tell(trials[0], state=TrialState.FAIL)  # a failure frees a place
    budget_ok(study, study.ask(), 2)


def test_a_waiting_trial_counts_against_the_budget(study):
    study.enqueue_trial({"attn": "keep"})
    later = study._storage.create_new_trial(study._study_id)  # a race: created past it
    trial = optuna.Trial(study, later)
    with pytest.raises(SurplusTrial):
        budget_ok(study, trial, 1)


def test_a_prior_config_enqueued_twice_runs_once(study):
    for _ in range(2):  # two workers starting together
        study.enqueue_trial({"attn": "4:32"}, user_attrs={contract.ORIGIN: "prior"})
    first, second = study.ask(), study.ask()
    budget_ok(study, first, 10)
    with pytest.raises(SurplusTrial, match=f"the same prior config is trial {first.number}"):
        budget_ok(study, second, 10)


@pytest.mark.parametrize("url, words", [
    ("foo://x", ["'foo://x' is not a storage URL", "postgresql://user:pass@host/db"]),
    ("sqlite:///", ["is not a storage URL"]),
    ("sqlite:////no/such/folder/s.db", ["folder /no/such/folder does not exist"]),
    ("journal:////no/such/folder/s.log", ["cannot open the journal file"]),
])
def test_bad_urls_are_one_sentence(url, words):
    with pytest.raises(UserError) as e:
        store.open_storage(url)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
