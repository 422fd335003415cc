"""Samplers for the trials after the seeds, by name (`--sampler`).

`sensitivity` (the default) proposes what the additive sensitivity model says is
the smallest config meeting the target (the fastest, when the study minimises
latency: the knapsack's resource is then the latency model's per-option times), with
two corrections from the trials measured so far:

- calibration: the model's predicted loss is rescaled to the measured quality
  loss of the trials predicted nearest to the target (the additive model is
  right about the order of layers more than about the absolute loss), and
- exploration: every layer's sensitivity is multiplied by exp(sigma * N(0, 1))
  before the knapsack is solved (Thompson-style), so each trial is a plausible
  optimum under the sensitivities' uncertainty; proposals differ from the best
  configs in the few layers the model is least sure about. A share `explore` of
  the trials (10%) goes anywhere along the resource's range instead, for the rest of
  the front.

In budget mode (a size budget, no quality target) it proposes the knapsack's plan at the
budget under perturbed sensitivities instead. `evolve` (evolve.py) is budget mode's
default; `nsga2` and `random` are Optuna's own, for comparison.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from .. import study as contract
from ..metrics import Target
from . import knapsack
from .prior import Prior


def seeded_choice(seed: int, trial, param_name: str, distribution) -> str:
    """A parameter outside the joint space (a trial started elsewhere): one seeded choice."""
    return random.Random(f"{seed}:{trial.number}:{param_name}").choice(distribution.choices)


@dataclass(frozen=True)
class SamplerInputs:
    costs: Mapping[str, Mapping[str, float]]   # param -> option -> predicted loss
    bits: Mapping[str, Mapping[str, float]]    # param -> option -> bits
    budget: float | None          # the target as a measured loss (None: no reachable target)
    loss_of: Callable[[FrozenTrial], float | None]  # a finished trial's measured loss
    scale: float | None           # measured loss per predicted loss, from the baselines
    max_bits: float | None        # --max-size-mib for the searched layers
    seed: int
    population: int               # for nsga2
    resource: Mapping[str, Mapping[str, float]] | None = None  # what the study minimises
    #                               per option (seconds for --minimize latency; None: bits)
    at_size: bool = False         # budget mode: the best quality at max_bits

    @property
    def res(self) -> Mapping[str, Mapping[str, float]]:
        return self.bits if self.resource is None else self.resource


def inputs_for(prior: Prior, target: Target, seed: int, prior_trials: int,
               at_size: bool = False) -> SamplerInputs:
    """What a study's sampler works from: its prior, and a trial's measured loss."""
    def loss_of(t: FrozenTrial) -> float | None:
        if prior.fp is None:
            return None
        return target.loss(contract.attr(t.user_attrs, contract.METRICS, {}).get(target.metric),
                           prior.fp)

    return SamplerInputs(prior.costs, prior.bits, prior.budget, loss_of, scale=prior.scale,
                         max_bits=prior.max_bits, seed=seed,
                         population=max(4, min(16, prior_trials)), resource=prior.resource,
                         at_size=at_size)


# ---- the registered samplers (autoq.search.SAMPLERS): SamplerInputs -> an Optuna sampler
def sensitivity(i: SamplerInputs) -> optuna.samplers.BaseSampler:
    return SensitivitySampler(i)


def nsga2(i: SamplerInputs) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(population_size=i.population, seed=i.seed)


def random_sampler(i: SamplerInputs) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=i.seed)


def key(params: Mapping[str, str]) -> tuple:
    return tuple(sorted(params.items()))


def calibrated_budget(pairs: list[tuple[float, float]], budget: float,
                      scale: float | None, near: int = 4) -> float | None:
    """The predicted loss that corresponds to the measured `budget`: the ratio
    measured/predicted of the `near` trials predicted closest to it (else `scale`)."""
    ratios = [(p, m / p) for p, m in pairs if p > 0 and m > 0 and math.isfinite(m)]
    k = scale or (statistics.median(r for _, r in ratios) if ratios else None)
    if not k:
        return None
    guess = budget / k
    closest = sorted(ratios, key=lambda pr: abs(math.log(pr[0] / guess)))[:near]
    if closest:
        k = statistics.median(r for _, r in closest)
    return budget / k


def propose(rng: random.Random, costs, res, want: float | None, max_bits: float | None,
            sigma: float, bits=None) -> dict[str, str]:
    """One knapsack solution under randomly perturbed sensitivities: the smallest (by
    the resource `res`) hull config whose (unperturbed) predicted loss is <= `want`
    (None: any); `max_bits` caps `bits` (None: the resource is the bits)."""
    noisy = {}
    for p, row in costs.items():
        f = math.exp(sigma * rng.gauss(0.0, 1.0))
        noisy[p] = {o: c * f for o, c in row.items()}
    hull = knapsack.within(knapsack.hull(noisy, res, steps=160), costs,
                           res if bits is None else bits, max_bits)
    scored = [(knapsack.totals(c, costs, res), c) for c in hull]
    if want is None:
        return rng.choice(scored)[1]
    ok = [s for s in scored if s[0][0] <= want]
    if not ok:
        return min(scored, key=lambda s: s[0][0])[1]
    return min(ok, key=lambda s: s[0][1])[1]


class SensitivitySampler(optuna.samplers.BaseSampler):
    def __init__(self, inputs: SamplerInputs, sigma: float = 0.3, explore: float = 0.1,
                 tries: int = 12):
        self.i, self.sigma, self.explore, self.tries = inputs, sigma, explore, tries

    def infer_relative_search_space(self, study, trial):
        return {p: CategoricalDistribution(list(row)) for p, row in self.i.costs.items()}

    def sample_relative(self, study, trial, search_space):
        if not search_space or trial.system_attrs.get("fixed_params"):
            return {}  # an enqueued (seed, retried) trial brings its own params
        rng = random.Random(f"{self.i.seed}:{trial.number}")
        trials = study.get_trials(deepcopy=False)
        seen = {key(t.params) for t in trials if t.number != trial.number}
        if self.i.at_size:   # budget mode: the knapsack at the budget, perturbed
            return self.at_size(rng, seen)
        pairs = []
        for t in trials:
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and set(t.params) >= set(self.i.costs):
                loss = self.i.loss_of(t)
                if loss is not None:
                    pairs.append((knapsack.totals(t.params, self.i.costs, self.i.bits)[0], loss))
        target = None if self.i.budget is None else \
            calibrated_budget(pairs, self.i.budget, self.i.scale)
        cfg: dict[str, str] = {}
        for _ in range(self.tries):
            want = None if target is None or rng.random() < self.explore else \
                target * math.exp(rng.gauss(0.0, 0.05))
            cfg = propose(rng, self.i.costs, self.i.res, want, self.i.max_bits, self.sigma,
                          self.i.bits)
            if key(cfg) not in seen:
                return cfg
        return self.neighbour(rng, cfg, seen)

    def neighbour(self, rng: random.Random, cfg: dict[str, str], seen: set) -> dict[str, str]:
        """When every perturbed knapsack gave a plan the study has (a small space near its
        frontier): the nearest unseen plan within the size cap, found one move at a time (a
        move: one choice to an undominated option, the smallest in the knapsack's resource,
        bits or time, first), so that no trial is spent on a repeat while one is left."""
        costs, res = self.i.costs, self.i.res

        def dominated(p: str, o: str) -> bool:   # another option as good and no dearer
            return any((costs[p][q], res[p][q]) < (costs[p][o], res[p][o]) and
                       costs[p][q] <= costs[p][o] and res[p][q] <= res[p][o] for q in costs[p])

        options = {p: [o for o in row if not dominated(p, o)] for p, row in costs.items()}
        ring, visited = [cfg], {key(cfg)}
        for _ in range(len(costs)):
            nxt = []
            for plan in ring:
                moves = [(p, o) for p in plan for o in options[p] if o != plan[p]]
                rng.shuffle(moves)
                moves.sort(key=lambda m: abs(res[m[0]][m[1]] - res[m[0]][plan[m[0]]]))
                for p, o in moves:
                    new = {**plan, p: o}
                    if key(new) in visited:
                        continue
                    visited.add(key(new))
                    fits = self.i.max_bits is None or \
                        knapsack.totals(new, costs, self.i.bits)[1] <= self.i.max_bits
                    if fits and key(new) not in seen:
                        return new
                    nxt.append(new)
            ring = nxt[:256]
        return cfg

    def at_size(self, rng: random.Random, seen: set) -> dict[str, str]:
        """The least perturbed-predicted-loss plan at the size budget (filled up to it)."""
        cfg: dict[str, str] = {}
        for _ in range(self.tries):
            noisy = {p: {o: c * math.exp(self.sigma * rng.gauss(0.0, 1.0)) for o, c in row.items()}
                     for p, row in self.i.costs.items()}
            cfg = knapsack.at_budget(noisy, self.i.bits, self.i.max_bits) or cfg
            if key(cfg) not in seen:
                break
        return cfg

    def sample_independent(self, study, trial, param_name, param_distribution):
        return seeded_choice(self.i.seed, trial, param_name, param_distribution)
