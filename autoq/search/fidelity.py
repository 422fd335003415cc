"""Multi-fidelity scoring in budget mode: a trial is judged on few tokens first, and only
the promising ones are scored on more, up to the whole search split.

The schedule (`schedule`, recorded in study.json as `fidelity`) is a list of rungs:
for an LM, rung 0 is the search split's first window cut to its first FIRST_TOKENS
tokens (a causal model's first outputs do not depend on later tokens, so the fp
reference's first rows hold); the next rungs are the first SHARES of the search split's
units in its shuffled scoring order; then the whole split. At each rung the trial reports the
mean KL from the fp model on what it has scored (Optuna intermediate value, step =
REDUCTION ** rung), and Optuna's SuccessiveHalvingPruner stops it unless it is in the
best 1/REDUCTION of the trials that reached that rung (the first ones: unless it is the
best so far). A pruned trial keeps what it measured (`fraction` < 1) and is never on a
front; a COMPLETE trial was scored on the whole split, so every number in a front and in
best.json is a whole-split number. Why these rungs: results/benchmarks/search-vs-oneshot
(fidelity.json, scripts/fidelity.py): on SmolLM2, 19 plans around the one-shot plan at 4.5
bits ranked by KL on 1 window cut to 128 tokens agree with the whole split's ranking at
Spearman 0.46, on one whole 512-token window at 0.82, on 4 windows at 0.94.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import optuna

REDUCTION = 4          # successive halving's reduction factor
FIRST_TOKENS = 512     # rung 0: the first unit, cut to this many tokens if it is longer (LMs)
SHARES = (1 / 10, 1 / 4)   # rungs 1, 2: these shares of the search split's units


@dataclass(frozen=True)
class Rung:
    step: int               # the Optuna step its value is reported at
    units: int              # units scored (windows, images)
    tokens: int | None      # each cut to this many tokens (None: whole units)


def pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION,
                                                  min_early_stopping_rate=0, bootstrap_count=0)


def rungs_for(total: int, seq_len: int | None) -> list[Rung]:
    """The rungs below the whole split of `total` units (`seq_len`: tokens per unit of an
    LM split, None for units that cannot be cut)."""
    tokens = FIRST_TOKENS if seq_len is not None and FIRST_TOKENS < seq_len else None
    sizes = [(1, tokens)] if tokens is not None or seq_len is not None else []
    sizes += [(max(1, round(total * share)), None) for share in SHARES]
    out: list[Rung] = []
    for units, cut in sizes:
        if units >= total or (out and cut is None and out[-1].tokens is None
                              and units <= out[-1].units):
            continue
        out.append(Rung(REDUCTION ** len(out), units, cut))
    return out


def schedule(ev) -> list[Rung]:
    """The rungs of an evaluator's search split."""
    sp = ev.search
    ids = getattr(sp.dataset, "ids", None)
    return rungs_for(sp.total, None if ids is None else int(ids.shape[1]))


def to_json(rungs: list[Rung], ev, prune: bool) -> dict | None:
    """study.json's `fidelity`: the schedule, the pruner, what the last rung is."""
    if not rungs and not prune:
        return None
    return {"pruner": "optuna.pruners.SuccessiveHalvingPruner", "reduction_factor": REDUCTION,
            "metric": "kld", "rungs": [asdict(r) for r in rungs],
            "final": {"units": ev.total, "protocol": ev.protocol}}


def score(ev, resolved, trial: optuna.Trial, rungs: list[Rung], sign: float,
          evaluate: Callable) -> tuple[dict, bool]:
    """Score `resolved` rung by rung, reporting `sign` * KL at each (sign -1 when the study
    maximises); (the metrics of what was scored, whether the pruner stopped it).
    `evaluate` is the evaluator's run (TrialRunner.evaluate)."""
    first = rungs[0] if rungs and rungs[0].tokens is not None else None
    if first is not None:
        part = evaluate(resolved, speed=False, split=ev.calibration(first.units, first.tokens))
        if _pruned(trial, first, part["kld"], sign):
            part.pop("units")
            return {**part, "fraction": first.units / ev.total, "tokens": first.tokens,
                    "rung": 0}, True
    later = [r for r in rungs if r.tokens is None]
    stopped: list[Rung] = []

    def stop(seen: dict[str, list[float]]) -> bool:
        kl = seen["kld"]
        rung = next((r for r in later if r.units == len(kl)), None)
        if rung is not None and _pruned(trial, rung, sum(kl) / len(kl), sign):
            stopped.append(rung)
            return True
        return False

    metrics = evaluate(resolved, speed=False, check_every=1, stop=stop)
    if stopped:
        metrics.pop("units")
        metrics["rung"] = rungs.index(stopped[0])
    return metrics, bool(stopped)


def _pruned(trial: optuna.Trial, rung: Rung, kl: float, sign: float) -> bool:
    trial.report(sign * kl, rung.step)
    return trial.should_prune()
