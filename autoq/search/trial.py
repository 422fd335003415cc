"""One trial: the sampler's choices -> a plan -> quantized, scored (stopping as soon as
the data seen decides the target), measured -> the trial's attributes; its objective
values are (the study's objective: size_mib or latency_ms, quality).

`TrialRunner.evaluate` is the one call into the evaluator, so a test can replace
it. What raises inside a trial is recorded as the trial's fail reason; the worker
loop (run.py) decides what happens next.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .. import study as contract
from . import fidelity
from .estimate import Estimate, estimate
from ..metrics import METRICS
from . import storage as store
from .prior import Prior
from .references import References
from .session import Session

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(Exception):
    pass


def note(trial: optuna.Trial, key: str, value) -> None:
    """Set a user attr unless another worker already failed the trial as stale."""
    try:
        trial.set_user_attr(key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def budget_ok(study: optuna.Study, trial: optuna.Trial, total: int) -> None:
    """Fail (as surplus) a trial that could make more than `total` finished trials.

    Exact with any number of workers: a trial may run only while fewer than `total`
    lower-numbered trials are waiting, running or finished. Numbers follow creation
    order and states only move WAITING -> RUNNING -> finished (or FAIL), so if
    total + 1 trials finished, the highest-numbered one saw the other `total`.
    A prior config that another worker enqueued too (a start-up race) is surplus."""
    alive = FINISHED + (TrialState.RUNNING, TrialState.WAITING)
    ahead = [t for t in study.get_trials(deepcopy=False, states=alive) if t.number < trial.number]
    mine = study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
    why = f"{total} trials are already finished, running or waiting" if len(ahead) >= total else \
        next((f"the same prior config is trial {t.number}" for t in ahead
              if mine and t.system_attrs.get("fixed_params") == mine
              and contract.origin(trial.user_attrs) == "prior" == contract.origin(t.user_attrs)),
             None)
    if why:
        trial.set_user_attr(contract.SURPLUS, True)
        raise SurplusTrial(why)


def latency_model(session: Session):
    """The latency model for every plan the space can make (timings of each
    (shape, option) as served, or read from the cache under --out)."""
    from ..serve.latency import LatencyModel

    options = sorted({c for c in session.fixed.values() if c} |
                     {o for ch in session.choices for o in ch.options if o},
                     key=lambda c: (c.nbits, c.group_size or 0))
    return LatencyModel.for_model(session.ev.loaded, options, session.ev.backend,
                                  Path(session.s.out), progress=lambda m: session.say(
                                      f"latency model: {m}"))


class TrialRunner:
    def __init__(self, session: Session, refs: References, prior: Prior, early: bool,
                 latency=None):
        self.session, self.refs, self.prior, self.early = session, refs, prior, early
        self.latency = latency  # the latency model: made before the prior when the study
        #                         minimises latency, else at the first trial that needs it
        self.trial_id: int | None = None
        self.trial: optuna.Trial | None = None   # the running trial

    def evaluate(self, resolved, **kw) -> dict:
        return self.session.ev.run(resolved, **kw)

    def objective(self, trial: optuna.Trial):
        """One trial under a heartbeat. What raises is recorded as the trial's fail
        reason (optuna marks it FAIL); Ctrl-C re-enqueues the config first."""
        session = self.session
        self.trial_id = trial._trial_id
        with store.heartbeat(session.storage, trial._trial_id, session.beat_s):
            try:
                return self._trial(trial)
            except optuna.TrialPruned:
                raise
            except KeyboardInterrupt:
                store.requeue(session.study, session.storage.get_trial(trial._trial_id))
                note(trial, contract.FAIL_REASON,
                     "interrupted (Ctrl-C); its config is enqueued again")
                raise
            except Exception as e:
                text = str(e).strip().splitlines()
                note(trial, contract.FAIL_REASON,
                     f"{e.__class__.__name__}: {text[0][:300] if text else ''}")
                raise

    def _trial(self, trial: optuna.Trial):
        session, target = self.session, self.session.target
        self.trial = trial
        budget_ok(session.study, trial, session.s.trials)
        labels = {c.param: trial.suggest_categorical(c.param, c.labels) for c in session.choices}
        resolved = session.resolved(labels)
        trial.set_user_attr(contract.ORIGIN, contract.origin(trial.user_attrs))
        trial.set_user_attr(contract.LAYERS, session.plan(resolved, {}).to_json()["layers"])
        dup = scored_before(session.study, trial)
        if dup is not None:   # a plan is scored once per study: a repeat reuses its result
            metrics = metrics_of(session.study, dup)
            trial.set_user_attr(contract.DUPLICATE_OF, dup.number)
            if dup.state == TrialState.PRUNED:
                trial.set_user_attr(contract.METRICS, metrics)
                raise optuna.TrialPruned(f"the same plan as pruned trial {dup.number}")
        else:
            metrics, verdict = self.score(labels, resolved)
            if verdict in ("infeasible", "pruned"):
                if not session.s.budget_mode:   # (budget mode: a size study, no latency)
                    metrics["latency_ms"] = 1e3 * self.predict(resolved)
                self.constrain(trial, metrics)
                trial.set_user_attr(contract.METRICS, metrics)
                trial.set_user_attr(contract.PRUNED_AT, metrics["fraction"])
                raise optuna.TrialPruned(f"{target.metric} ~{metrics[target.metric]:.4g} after "
                                         f"{metrics['fraction']:.0%} of the data ({verdict})")
            trial.set_user_attr(contract.UNITS, metrics.pop("units"))  # a rescore goes on here
            self.add_speed(metrics, resolved)
        trial.set_user_attr(contract.METRICS, metrics)
        if not math.isfinite(metrics[target.metric]):
            raise FloatingPointError(f"{target.metric} is {metrics[target.metric]} (numerical "
                                     "overflow in the quantized model)")
        self.constrain(trial, metrics)
        if session.s.budget_mode:   # one objective: quality (the size is the budget)
            return metrics[target.metric]
        return metrics[session.objective_key], metrics[target.metric]

    def constrain(self, trial: optuna.Trial, metrics: dict) -> None:
        for name, value in self.session.target.constraints(metrics).items():
            trial.set_constraint(name, value)

    def score(self, labels: dict, resolved) -> tuple[dict, str | None]:
        """Score until the data seen decides the target (or all of it); the metric of
        a partly scored trial is the estimate for all the data, with its interval."""
        metric = self.session.target.metric
        prior = self.prior
        oversize = prior.max_bits is not None and \
            sum(prior.bits[p][o] for p, o in labels.items()) > prior.max_bits
        if self.session.s.budget_mode and not oversize:   # rung by rung (fidelity.py)
            sign = -1.0 if self.session.target.higher_is_better else 1.0
            metrics, pruned = fidelity.score(self.session.ev, resolved, self.trial,
                                             self.session.rungs, sign, self.evaluate)
            return metrics, "pruned" if pruned else None
        last: dict = {}  # the verdict and estimate of the last check

        def stop(seen: dict[str, list[float]]) -> bool:
            units = seen[metric]
            if units and not math.isfinite(units[-1]):
                last.update(verdict="nan", est=None)
                return True
            last["verdict"], last["est"] = self.judge(units, oversize)
            return last["verdict"] is not None

        metrics = self.evaluate(resolved, speed=self.session.s.trial_speed == "measured",
                                check_every=self.session.ev.task.check_every, stop=stop)
        est = last.get("est")
        if metrics["fraction"] < 1 and last.get("verdict") != "nan":
            m = METRICS[metric]
            metrics[metric] = m.clip(m.link(est.mean)) if est else math.nan
            if est:
                metrics[f"{metric}_interval"] = [m.clip(v) for v in est.interval(m.link)]
                metrics["estimated_from"] = est.reference
        return metrics, last.get("verdict")

    def judge(self, units: list[float], oversize: bool = False
              ) -> tuple[str | None, Estimate | None]:
        """('infeasible' | 'feasible' | None, the estimate): decided once the units seen
        put the target outside the interval (`autoq.estimate`); None: score on."""
        if oversize:
            return "infeasible", None
        every = self.session.ev.task.check_every
        if not self.early or len(units) < every:
            return None, None
        est = estimate(units, self.session.ev.total, self.refs.units(self.session.target.metric))
        link = METRICS[self.session.target.metric].link
        return self.session.target.decide(est.interval(link)), est

    def predict(self, resolved) -> float:
        """The latency model's seconds per token (image) of a plan."""
        if self.latency is None:
            self.latency = latency_model(self.session)
        return self.latency.predict(resolved)

    def add_speed(self, metrics: dict, resolved) -> None:
        """A trial's predicted `latency_ms` (every study), and its speed: measured
        (--trial-speed measured), else predicted."""
        session = self.session
        seconds = self.predict(resolved)
        metrics["latency_ms"] = 1e3 * seconds
        if session.s.trial_speed == "measured":
            metrics["speed_source"] = "measured"
            return
        metrics[session.speed_key] = 1.0 / seconds
        metrics["speed_source"] = "predicted"


def scored_before(study: optuna.Study, trial: optuna.Trial):
    """The finished trial (COMPLETE with metrics, or PRUNED) with `trial`'s plan, if any."""
    return next((t for t in study.get_trials(deepcopy=False, states=FINISHED)
                 if t.params == trial.params and t.number != trial.number
                 and contract.attr(t.user_attrs, contract.METRICS) is not None
                 and contract.attr(t.user_attrs, contract.DUPLICATE_OF) is None), None)


def metrics_of(study: optuna.Study, t, rescored: dict | None = None,
               front_speed: dict | None = None) -> dict:
    """A trial's metrics with the study's overlay (`autoq.study.overlay`)."""
    if rescored is None:
        rescored = contract.attr(study.user_attrs, contract.RESCORED, {})
    if front_speed is None:
        front_speed = {}
    number = contract.attr(t.user_attrs, contract.DUPLICATE_OF, t.number)
    return contract.overlay(contract.attr(t.user_attrs, contract.METRICS, {}),
                            rescored.get(str(number)), front_speed.get(str(t.number)))
