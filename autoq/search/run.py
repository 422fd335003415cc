"""`autoq search`: a resumable multi-objective Optuna study over per-layer configs.

Objectives: model size (MiB) or, with --minimize latency, the latency model's
predicted ms per token (image), minimised; and quality (ppl minimise / accuracy
maximise), with the quality target (and optional --max-size-mib) as Optuna
constraints. A worker opens the study (session.py), measures or reads the
reference points (references.py) and the sensitivities (and, for a latency study,
the latency model), enqueues the prior trials once (prior.py), then runs trials
(trial.py) with the sampler (sampler.py) until
the study has --trials finished ones, and writes the result files (finalize.py).
This module is only that loop.
"""

from __future__ import annotations

import time
from typing import Callable

import optuna
from optuna.trial import TrialState

from .. import study as contract
from ..errors import UserError
from ..io import write_json
from ..quant import FP
from ..quant.size import STORED_FLOAT_BYTES
from . import oneshot, prior as priors
from . import storage as store
from .finalize import Outcome, best_trial, finalize, write_trials
from .references import References
from . import SAMPLERS
from .sampler import inputs_for
from .sensitivity import measure_or_load
from .session import SearchSettings, Session, open_session
from .trial import FINISHED, TrialRunner, latency_model, metrics_of

MAX_FAILS_IN_A_ROW = 5
WRITE_EVERY_S = 10.0   # trials.jsonl is rewritten at most this often while trials run


def has_room(study: optuna.Study, total: int) -> bool:
    """Another trial may start: finished + running < total."""
    busy = study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
    return len(busy) < total


def early_stopping(session: Session, baselines: dict) -> bool:
    """Stop scoring trials early only when the target is reachable at all (the
    unquantized model meets it)."""
    if not session.s.prune or session.target.value is None:
        return False
    fp = baselines.get(FP, {}).get(session.target.metric)
    if fp is not None and not session.target.reached(fp):
        session.say(f"the unquantized model has {session.target.metric} {fp:.4g}, which misses "
                    f"the target {session.s.target:g}: no config can meet it; mapping the "
                    "trade-off with every trial scored on all the data")
        return False
    return True


def prepare(session: Session) -> TrialRunner:
    """Reference points, sensitivities, the latency model when the study minimises
    latency (its per-option times are the knapsack's resource), the prior trials and
    the sampler."""
    refs = References(session)
    refs.use_reference("search")   # KL from the fp model, on every evaluation
    baselines = refs.baselines()
    refs.load_units()
    early = early_stopping(session, baselines)
    layer_options = {n: c.options for c in session.choices for n in c.layers}
    sens = measure_or_load(session.ev, layer_options, session.out / "sensitivity")
    write_json(session.dir / contract.SENSITIVITY_FILE, sens)
    fp_bits = 8.0 * STORED_FLOAT_BYTES  # an unquantized layer as sizes count it
    latency = latency_model(session) if session.s.minimize == "latency" else None
    prior = priors.build(session.choices, session.ev.shapes, sens, baselines, session.target,
                         fp_bits, latency)
    n = priors.count(session.s.trials, session.s.prior_trials)
    seeds = oneshot.seeds(session, refs, prior) if session.s.budget_mode else None
    enqueued = priors.enqueue(session.study, prior, n, seeds)
    if enqueued is not None:
        session.say(f"enqueued {enqueued} prior configs: "
                    + ("the one-shot knapsack plans at the budget" if seeds is not None else
                       "knapsack configs from sensitivities")
                    + (f" (loss scale {prior.scale:.3g})" if prior.scale else ""))
    inputs = inputs_for(prior, session.target, session.s.seed, n, session.s.budget_mode)
    session.study.sampler = SAMPLERS[session.s.sampler_name](inputs)
    return TrialRunner(session, refs, prior, early, latency)


def run_one(session: Session, runner: TrialRunner) -> optuna.trial.FrozenTrial | None:
    """One trial; None if another worker failed it as stale meanwhile (this worker
    looked dead: no heartbeat for GRACE_S) and so enqueued it again."""
    ran = []
    runner.trial_id = None
    try:
        session.study.optimize(runner.objective, n_trials=1, catch=(Exception,),
                               callbacks=[lambda st, tr: ran.append(tr)])
    except Exception:
        if runner.trial_id is None or \
                session.storage.get_trial(runner.trial_id).state != TrialState.FAIL:
            raise
        session.say(f"another worker took this worker's trial for a dead one (no heartbeat "
                    f"for {session.grace_s:g} s; raise AUTOQ_GRACE_S on a busy machine); its "
                    "config runs again")
        return None
    return ran[-1] if ran else None


def described(session: Session, m: dict) -> str:
    """A trial's quality and size (and predicted latency, in a latency study), in words."""
    metric = session.target.metric
    fast = f", {m.get('latency_ms', float('nan')):.3g} ms" if session.s.minimize == "latency" \
        else ""
    return f"{metric} {m[metric]:.4g}, {m.get('size_mib', float('nan')):.1f} MiB{fast}"


def progress(session: Session, durations: list[float], last) -> None:
    done = len(session.study.get_trials(deepcopy=False, states=FINISHED))
    eta = max(0, session.s.trials - done) * sum(durations[-5:]) / len(durations[-5:])
    best = best_trial(session)
    if best:
        best_txt = f"best feasible {described(session, metrics_of(session.study, best))}"
    else:
        best_txt = "no target" if session.target.value is None else "no feasible config yet"
    m = contract.attr(last.user_attrs, contract.METRICS, {})
    what = described(session, m) if session.target.metric in m else ""
    session.say(f"[{done}/{session.s.trials}] trial {last.number} {last.state.name.lower()} "
                f"({contract.origin(last.user_attrs)}) {what} | {best_txt} | "
                f"ETA {eta / 60:.1f} min")


def loop(session: Session, runner: TrialRunner) -> None:
    """Trials until the study has --trials finished ones (or --timeout)."""
    start, fails, storage_errors, durations = time.time(), 0, 0, []
    written = 0.0   # when trials.jsonl was last written
    while True:
        store.fail_stale(session.study, session.grace_s)  # trials of dead workers: retried
        if len(session.study.get_trials(deepcopy=False, states=FINISHED)) >= session.s.trials:
            return
        if session.s.timeout and time.time() - start > session.s.timeout:
            session.say("timeout reached; stopping before the next trial")
            return
        if not has_room(session.study, session.s.trials):
            time.sleep(min(2.0, session.beat_s))  # other workers' trials may finish
            continue
        t0 = time.time()
        try:
            last = run_one(session, runner)
            storage_errors = 0
        except optuna.exceptions.StorageInternalError as e:  # busy or dropped database
            storage_errors += 1
            if storage_errors >= MAX_FAILS_IN_A_ROW:
                raise UserError(f"--storage {session.storage_url} failed {storage_errors} times "
                                f"in a row ({e.__class__.__name__}: {str(e)[:160]}); check the "
                                "database, then run the same command to resume.")
            time.sleep(1.0)
            continue
        if time.time() - written >= WRITE_EVERY_S:
            write_trials(session)
            written = time.time()
        if last is None:
            continue
        fails = fails + 1 if last.state == TrialState.FAIL and \
            not contract.attr(last.user_attrs, contract.SURPLUS) else 0
        if fails >= MAX_FAILS_IN_A_ROW:
            reason = contract.attr(last.user_attrs, contract.FAIL_REASON, "unknown")
            raise UserError(f"{fails} trials in a row failed (last: {reason[:200]}); fix the "
                            "cause and run the same command to resume.")
        durations.append(time.time() - t0)
        progress(session, durations, last)


def search(s: SearchSettings, say: Callable[[str], None] = lambda m: None) -> Outcome:
    """Open (or resume) the study, run this worker's trials, write the results."""
    session = open_session(s, say)
    runner = prepare(session)
    try:
        loop(session, runner)
    finally:
        write_trials(session)
    return finalize(session, runner)

