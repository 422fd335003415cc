"""The study's result files: trials.jsonl after every trial; at the end the Pareto
plans, pareto.json and best.json.

Before the plans are written, the partly scored configs on the front are scored
on the rest of the data (until the front holds only full-data scores) and the
front's speeds are measured (not predicted). All files are written atomically,
under the study folder's lock, so the last of several workers writes last.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .. import study as contract
from ..errors import UserError
from ..io import write_atomic, write_json
from ..quant import FP, LayerConfig
from . import storage as store
from .references import References, as_units, report_entry, scored_on
from .session import Session
from .trial import FINISHED, metrics_of


@dataclass
class Outcome:
    study_dir: Path
    finished: int
    front: list[dict] = field(default_factory=list)
    best: dict | None = None
    budget_mib: float | None = None   # the size cap (budget mode: the budget)


def trial_layers(t: optuna.trial.FrozenTrial) -> dict[str, LayerConfig | None]:
    """A finished trial's plan (module name -> config) from its layers attribute."""
    return {n: LayerConfig.from_json(v)
            for n, v in contract.attr(t.user_attrs, contract.LAYERS).items()}


def trial_record(t: optuna.trial.FrozenTrial, session: Session, metrics: dict) -> dict:
    attrs = t.user_attrs
    rec = {"number": t.number, "state": t.state.name, "origin": contract.origin(attrs),
           "layers": contract.attr(attrs, contract.LAYERS, {}), "metrics": metrics,
           "feasible": t.state == TrialState.COMPLETE and session.target.meets(metrics)}
    for key in (contract.DUPLICATE_OF, contract.PRUNED_AT, contract.RETRY_OF, contract.SURPLUS):
        value = contract.attr(attrs, key)
        if value is not None:
            rec[key.removeprefix("autoq:")] = value
    if t.state == TrialState.FAIL:
        rec["fail_reason"] = contract.attr(attrs, contract.FAIL_REASON, "unknown")
    return rec


def write_trials(session: Session) -> None:
    """trials.jsonl from the storage; under the folder lock, so the last writer among
    several workers also read the storage last."""
    with store.file_lock(session.dir / contract.LOCK_FILE):
        rescored = contract.attr(session.study.user_attrs, contract.RESCORED, {})
        lines = [trial_record(t, session, metrics_of(session.study, t, rescored))
                 for t in session.study.get_trials(deepcopy=False,
                                                   states=FINISHED + (TrialState.FAIL,))]
        write_atomic(session.dir / contract.TRIALS_FILE,
                     "".join(json.dumps(r) + "\n" for r in lines))


def best_trial(session: Session):
    """The smallest (for --minimize latency: the fastest, by predicted latency) COMPLETE
    trial that meets the target, or in budget mode the best quality at the size budget
    (`autoq.study.best`); None without a target or a budget (the study maps the
    trade-off: no config is best)."""
    if session.target.value is None and not session.s.budget_mode:
        return None
    study = session.study
    rescored = contract.attr(study.user_attrs, contract.RESCORED, {})
    done = [(t, metrics_of(study, t, rescored))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return contract.best(done, session.target, number_of=lambda t: t.number,
                         x=session.objective_key)


def rescore(session: Session, t) -> None:
    """Score a partly scored front config on the rest of the data; kept with the study
    (its estimate too, under `estimate`)."""
    study, metric = session.study, session.target.metric
    if str(t.number) in contract.attr(study.user_attrs, contract.RESCORED, {}):
        return  # another worker did it
    old = contract.attr(t.user_attrs, contract.METRICS)
    session.say(f"scoring the rest of Pareto trial {t.number}'s data (estimated "
                f"{metric} {old[metric]:.4g} from {old['fraction']:.0%} of it)")
    t0 = time.perf_counter()
    full = session.ev.run(trial_layers(t), speed=False,
                          done=as_units(contract.attr(t.user_attrs, contract.UNITS),
                                        session.ev.task.metric))
    units = full.pop("units")
    estimate = {k: old[k] for k in (metric, f"{metric}_interval", "estimated_from", "fraction")
                if k in old}
    metrics = {**{k: v for k, v in old.items() if k not in estimate}, **full,
               "estimate": estimate, "rescore_seconds": time.perf_counter() - t0}
    rescored = dict(contract.attr(study.user_attrs, contract.RESCORED, {}))
    rescored[str(t.number)] = {"metrics": metrics, "units": units}
    study.set_user_attr(contract.RESCORED, rescored)


def to_measure(n: int | None, front_numbers: list[int], best: int | None) -> set[int]:
    """Front positions whose speed is re-measured (or that are scored on the report
    split): all (n None), or the best config plus configs spread evenly along the front,
    n in all."""
    if n is None or n >= len(front_numbers):
        return set(range(len(front_numbers)))
    picks = [i for i, number in enumerate(front_numbers) if number == best]
    for i in (round(k * (len(front_numbers) - 1) / max(n - 1, 1)) for k in range(n)):
        if len(picks) < n and i not in picks:
            picks.append(i)
    return set(picks[:n])


def measured_speed(session: Session, t, metrics: dict) -> dict:
    """A front config's speed measured on the serving backend (kept with the study)."""
    if metrics.get("speed_source") == "measured":
        return metrics
    known = contract.attr(session.study.user_attrs, contract.FRONT_SPEED, {})
    if str(t.number) not in known:
        session.say(f"measuring the speed of Pareto trial {t.number}")
        size, _ = session.ev.serve(trial_layers(t))
        measured = session.ev.speed(size)
        measured[f"{session.speed_key}_predicted"] = metrics.get(session.speed_key)
        measured["speed_source"] = "measured"
        known = {**known, str(t.number): measured}
        session.study.set_user_attr(contract.FRONT_SPEED, known)
    return {**metrics, **known[str(t.number)]}


def front(session: Session) -> list:
    """The front of the study's distinct COMPLETE configs by (the objective, quality),
    every one scored in full."""
    study = session.study
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
            if contract.attr(t.user_attrs, contract.METRICS) is not None
            and contract.attr(t.user_attrs, contract.DUPLICATE_OF) is None]
    while True:
        rescored = contract.attr(study.user_attrs, contract.RESCORED, {})
        trials = contract.front([(t, metrics_of(study, t, rescored)) for t in done],
                                session.target, x=session.objective_key)
        partial = [t for t in trials if metrics_of(study, t, rescored).get("fraction", 1) < 1]
        if not partial:
            return trials
        for t in partial:
            rescore(session, t)
        write_trials(session)


def reported(session: Session, refs: References, trials: list) -> dict[str, dict]:
    """The report split's metrics of `trials` (trial number -> entry), scored in full once
    per report protocol (a resume with another --report-limit scores them again) and kept
    with the study; the baselines are reported too. {} (said) when the report
    split cannot be loaded (e.g. offline without --report-data)."""
    try:
        refs.use_reference("report")
    except UserError as e:
        session.say(f"no report split, so the plans carry search-split numbers only: {e}")
        return {}
    refs.report()
    return report_trials(session, trials)


def report_trials(session: Session, trials: list) -> dict[str, dict]:
    study, protocol = session.study, session.ev.split("report").protocol
    for t in trials:
        known = contract.attr(study.user_attrs, contract.REPORT, {})
        if scored_on(known.get(str(t.number)), protocol):
            continue  # another worker (or an earlier run on this protocol) did it
        session.say(f"scoring Pareto trial {t.number} on the report split")
        entry = report_entry(session.ev.run(trial_layers(t), speed=False, split="report"))
        known = dict(contract.attr(study.user_attrs, contract.REPORT, {}))
        study.set_user_attr(contract.REPORT, {**known, str(t.number): entry})
    return dict(contract.attr(study.user_attrs, contract.REPORT, {}))


def report_target(session: Session, baselines: dict):
    """The target on the report split: the same quality loss against the fp model as on
    the search split (`Target.carried`)."""
    fp = baselines.get(FP, {})
    metric = session.target.metric
    return session.target.carried(fp.get(metric), (fp.get("report") or {}).get(metric))


def finalize(session: Session, runner) -> Outcome:
    """The front scored in full, its speeds measured, the one-shot plans and the report
    split (`runner`: the search's TrialRunner, with its references and prior), then the
    files."""
    from . import oneshot

    trials = front(session)
    best = best_trial(session)
    chosen = to_measure(session.s.measure_front, [t.number for t in trials],
                        best.number if best else None)
    metrics = [measured_speed(session, t, metrics_of(session.study, t)) if i in chosen
               else metrics_of(session.study, t) for i, t in enumerate(trials)]
    on_report = to_measure(session.s.report_front, [t.number for t in trials],
                           best.number if best else None)
    report = reported(session, runner.refs, [t for i, t in enumerate(trials) if i in on_report])
    oneshot.measure(session, runner.refs, runner.prior, runner)
    there = report_target(session, runner.refs.stored())
    for t, m in zip(trials, metrics):
        if str(t.number) in report:
            entry = report[str(t.number)]
            m["report"] = {**entry, "meets_target": there.meets({**m, **entry})}
            if there.value is not None:
                m["report"]["target"] = there.value
    with store.file_lock(session.dir / contract.LOCK_FILE):
        return write_front(session, trials, metrics, best)


def write_front(session: Session, trials: list, metrics: list[dict], best) -> Outcome:
    folder = session.dir
    out = Outcome(folder, len(session.study.get_trials(deepcopy=False, states=FINISHED)),
                  budget_mib=session.target.max_size_mib)
    for i, (t, m) in enumerate(zip(trials, metrics)):
        plan = session.plan(trial_layers(t), m, t.number)
        name = contract.pareto_file(i)
        plan.save(folder / name)
        out.front.append({"plan": name, "number": t.number, "metrics": m,
                          "feasible": session.target.meets(m)})
        if best is not None and t.number == best.number:
            plan.save(folder / contract.BEST_FILE)
            out.best = {"plan": contract.BEST_FILE, "number": t.number, "metrics": m}
    if best is None:
        (folder / contract.BEST_FILE).unlink(missing_ok=True)
    write_json(folder / contract.PARETO_FILE, {
        "study": session.name, "model": session.s.eval.model, "task": session.ev.task.name,
        "metric": session.target.metric, "target": session.s.target,
        contract.OBJECTIVE: session.s.minimize,
        "protocol": session.ev.protocol, "front": out.front,
        "best": contract.BEST_FILE if out.best else None})
    for old in folder.glob("pareto-*.json"):  # plans of an older, longer front
        if old.name not in {f["plan"] for f in out.front}:
            old.unlink(missing_ok=True)
    return out
