"""One-shot plans: what a plan made in one shot, with no trials, gets, as a reference
series beside every searched front. Two signals, the same knapsack:

- `sensitivity`: the Fisher-weighted quantization error of every (choice, option), the
  table the search's prior starts from (autoq/search/sensitivity.py);
- `single-layer-kl`: quantize one choice at a time (everything else unquantized) and
  measure the KL from the fp model on the first CALIBRATION units of the search split
  (for LMs, their first TOKENS tokens: one forward of 128 tokens per pair).

For each signal and each budget (--one-shot, default BUDGETS: bits per weight over the searched layers,
scales and zeros included), the knapsack's config of the least predicted loss that fits
(autoq.search.knapsack.at_budget) is evaluated like a trial: exact size, the search
split in full, predicted speed; at the end of a search also the report split. They
depend on the model, the data, the space and the options only, so they are measured
once and shared by every study under the same --out (`<out>/baselines/oneshot-<key>.json`,
and the study's `autoq:oneshot` attribute and oneshot.json). The budgets are bits in
every study: a latency study (--minimize latency) gets the same plans, each with its
predicted `latency_ms` beside its size, so they sit on its latency axis too.
"""

from __future__ import annotations

import hashlib
import json

from optuna.trial import TrialState

from .. import study as contract
from ..errors import UserError
from ..io import write_json
from ..quant import FP, label_of
from . import knapsack
from .prior import MIB_BITS, Prior
from .references import References, report_entry, scored_on
from .session import Session

BUDGETS = (4.0, 4.5, 5.0, 6.0)   # bits per searched weight (the default of --one-shot)
CALIBRATION = 1                  # search-split units the single-layer KL is measured on ...
TOKENS = 128                     # ... each cut to its first 128 tokens (LMs)
SIGNALS = ("sensitivity", "single-layer-kl")
PLANS = "filled, tied once, exact"   # how the plans are made: knapsack.at_budget fills the
#                              budget, a tied matrix's bits are counted once (Choice.stored),
#                              3-bit sizes exact (LayerConfig.stored_bits)
ONESHOT_FILE = contract.ONESHOT_FILE


def _key(session: Session, refs: References, *more: str) -> str:
    choices = [[c.param, list(c.layers), list(c.labels)] for c in session.choices]
    ident = [refs.key(), choices, CALIBRATION, TOKENS, *more]   # plans are keyed by budget
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def single_layer_kl(session: Session, refs: References) -> dict[str, dict[str, float]]:
    """Per choice and option: the KL from the fp model with only that choice quantized,
    on the first CALIBRATION units of the search split (cached with the one-shot plans)."""
    path = session.out / "baselines" / f"single-layer-kl-{_key(session, refs)}.json"
    if path.exists():
        return json.loads(path.read_text())
    ev = session.ev
    split = ev.calibration(CALIBRATION, TOKENS)
    costs: dict[str, dict[str, float]] = {}
    pairs = [(c, o) for c in session.choices for o in c.options]
    session.say(f"one-shot: single-layer KL of {len(pairs)} (choice, option) pairs on "
                f"{ev.split(split).protocol}")
    for choice, cfg in pairs:
        row = costs.setdefault(choice.param, {})
        if cfg is None:
            row[FP] = 0.0
            continue
        resolved = {**session.fixed, **{n: None for n in ev.shapes if n not in session.fixed}}
        resolved.update({n: cfg for n in choice.layers})
        row[label_of(cfg)] = ev.run(resolved, speed=False, split=split)["kld"]
    write_json(path, costs)
    return costs


def budgets(session: Session, prior: Prior) -> dict[str, tuple[float, float]]:
    """label -> (bits per searched weight, the knapsack's budget in bits): --one-shot, else
    BUDGETS, and in budget mode the study's budget itself (exactly its bits)."""
    weights = sum(session.ev.loaded.units()[n].weights for c in session.choices for n in c.stored)
    if session.s.one_shot is None and session.s.budget_mode:
        return {f"{prior.max_bits / weights:.4g}": (prior.max_bits / weights, prior.max_bits)}
    chosen = BUDGETS if session.s.one_shot is None else session.s.one_shot
    return {f"{b:g}": (b, b * weights) for b in chosen}


def plans(session: Session, refs: References, prior: Prior) -> dict[str, dict]:
    """label ("sensitivity@4.5") -> {signal, budget_bits, params} for every budget that fits."""
    tables = {"sensitivity": prior.costs, "single-layer-kl": single_layer_kl(session, refs)}
    out = {}
    for signal in SIGNALS:
        for label, (per_weight, bits) in budgets(session, prior).items():
            cfg = knapsack.at_budget(tables[signal], prior.bits, bits)
            if cfg is not None:
                out[f"{signal}@{label}"] = {"signal": signal, "budget_bits": per_weight,
                                            "params": cfg}
    return out


def seeds(session: Session, refs: References, prior: Prior) -> list[dict[str, str]]:
    """Budget mode's first trials: each signal's knapsack plan at the budget (distinct)."""
    smallest = sum(min(row.values()) for row in prior.bits.values())
    if prior.max_bits is None or smallest > prior.max_bits:
        floor = session.target.max_size_mib + (smallest - (prior.max_bits or 0)) / MIB_BITS
        raise UserError(f"a size budget of {session.target.max_size_mib:.4g} MiB is below the "
                        f"smallest plan this space allows ({floor:.4g} MiB); raise it.")
    tables = {"sensitivity": prior.costs, "single-layer-kl": single_layer_kl(session, refs)}
    out: list[dict[str, str]] = []
    for signal in SIGNALS:
        cfg = knapsack.at_budget(tables[signal], prior.bits, prior.max_bits)
        if cfg not in out:
            out.append(cfg)
    return out


def scored_as_trial(session: Session, params: dict[str, str]) -> tuple[dict | None, dict]:
    """(the search-split metrics, the report-split entry or {}) of a COMPLETE trial with
    these params scored on the whole split: a one-shot plan the search ran as a trial (budget
    mode's seeds) is not scored again."""
    from .trial import metrics_of

    report = contract.attr(session.study.user_attrs, contract.REPORT, {})
    for t in session.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        m = metrics_of(session.study, t)
        if t.params == params and m.get("fraction", 0) >= 1:
            return m, report.get(str(t.number), {})
    return None, {}


def measure(session: Session, refs: References, prior: Prior, trial) -> dict[str, dict]:
    """The one-shot plans, each evaluated like a trial on the search split (in full) and
    on the report split when the search has one; shared per protocol and space."""
    path = session.out / "baselines" / f"oneshot-{_key(session, refs, PLANS)}.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    if session.s.one_shot == ():
        session.say("one-shot plans: none (--one-shot none)")
        return {}
    report = session.ev.splits.get("report")
    mine = plans(session, refs, prior)   # the shared cache may hold other budgets' plans
    for label, entry in mine.items():
        have = done.get(label, {})
        metrics, reported = scored_as_trial(session, entry["params"])
        if "metrics" not in have:
            resolved = session.resolved(entry["params"])
            if metrics is None:
                session.say(f"one-shot plan {label}: evaluating")
                metrics = session.ev.run(resolved, speed=False)
                metrics.pop("units")
                trial.add_speed(metrics, resolved)
            have = {**entry, "layers": session.plan(resolved, {}).to_json()["layers"],
                    "metrics": metrics}
        elif "latency_ms" not in have["metrics"]:   # cached before latency_ms was recorded
            have["metrics"]["latency_ms"] = 1e3 * trial.predict(session.resolved(entry["params"]))
        if report is not None and scored_on(reported, report.protocol):
            have["report"] = reported
        if report is not None and report.reference is not None \
                and not scored_on(have.get("report"), report.protocol):
            session.say(f"one-shot plan {label}: report split")
            have["report"] = report_entry(session.ev.run(session.resolved(entry["params"]),
                                                         speed=False, split="report"))
        done[label] = have
        write_json(path, done)
    done = {label: done[label] for label in mine}
    session.study.set_user_attr(contract.ONESHOT, done)
    write_json(session.dir / ONESHOT_FILE, done)
    return done

