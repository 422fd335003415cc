"""`evolve`: the budget-mode sampler (`autoq search --max-size-mib X` / `--bits B` with no
quality target). It explores around the best plans measured so far, never over the
budget:

- *mutation* (EvoPress-style level switches): one choice moves one level up (the next
  option with more bits) and others move one level down until the plan fits again;
  the bits left over are then spent by the knapsack's `fill` on randomly perturbed
  sensitivities;
- *crossover*: each choice from one of two good plans, then `repair`ed to the budget
  (the cheapest downgrades per bit freed) and filled.

Parents are the best COMPLETE trials (scored on the whole search split; the pruner
stops the others on few tokens). Until one exists, the plan a proposal starts from is
the knapsack's plan at the budget. A plan proposed before in the study is never
proposed again. Everything but the sampler class is a pure function of its arguments.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from . import knapsack
from .knapsack import Config, Table
from .sampler import SamplerInputs, seeded_choice

ELITE = 8          # parents are drawn from the best ELITE complete trials
CROSSOVER = 0.25   # share of proposals made by crossover (given two parents)
SIGMA = 0.3        # log-normal noise on the sensitivities that guide and `fill` use
GUIDED = 0.5        # share of mutations that switch the best-rated layers (else random ones)


def ladder(row: Mapping[str, float]) -> list[str]:
    """A choice's options from the fewest bits to the most (its levels)."""
    return sorted(row, key=lambda o: (row[o], o))


def size(cfg: Config, bits: Table) -> float:
    return sum(bits[p][o] for p, o in cfg.items())


def step(cfg: Config, p: str, bits: Table, by: int) -> str | None:
    """The option one level up (by=1) or down (by=-1) from `cfg[p]`: the nearest with
    more (fewer) bits; None at the end."""
    levels, now = ladder(bits[p]), bits[p][cfg[p]]
    ahead = [o for o in (levels if by > 0 else reversed(levels)) if by * (bits[p][o] - now) > 0]
    return ahead[0] if ahead else None


def repair(cfg: Config, costs: Table, bits: Table, max_bits: float) -> Config:
    """Down a level at a time, the least predicted loss per bit freed, until it fits."""
    out = dict(cfg)
    while size(out, bits) > max_bits:
        moves = [((costs[p][d] - costs[p][out[p]]) / (bits[p][out[p]] - bits[p][d]), p, d)
                 for p in out if (d := step(out, p, bits, -1)) is not None]
        if not moves:
            break   # the smallest plan: the caller checked that it fits
        _, p, d = min(moves)
        out[p] = d
    return out


def noisy(rng: random.Random, costs: Table, sigma: float = SIGMA) -> Table:
    return {p: {o: c * math.exp(sigma * rng.gauss(0.0, 1.0)) for o, c in row.items()}
            for p, row in costs.items()}


def mutate(rng: random.Random, cfg: Config, costs: Table, bits: Table, max_bits: float,
           switches: int = 1) -> Config:
    """`switches` level switches: a random choice one level up, then random others one
    level down until the plan fits the budget; then the left-over bits filled."""
    out, guess = dict(cfg), noisy(rng, costs)
    guided = rng.random() < GUIDED

    def rate(p: str, by: int) -> float:   # predicted loss change per bit of a level switch
        to = step(out, p, bits, by)
        return (guess[p][to] - guess[p][out[p]]) / (bits[p][to] - bits[p][out[p]])

    for _ in range(switches):
        ups = [p for p in out if step(out, p, bits, 1) is not None]
        if not ups:
            break
        up = min(ups, key=lambda p: rate(p, 1)) if guided else rng.choice(ups)
        out[up] = step(out, up, bits, 1)
        downs = [p for p in out if p != up and step(out, p, bits, -1) is not None]
        rng.shuffle(downs)
        if guided:   # the cheapest first (popped from the end)
            downs.sort(key=lambda p: rate(p, -1), reverse=True)
        while size(out, bits) > max_bits and downs:
            p = downs.pop()
            out[p] = step(out, p, bits, -1)
    return knapsack.fill(repair(out, costs, bits, max_bits), guess, bits, max_bits)


def crossover(rng: random.Random, a: Config, b: Config, costs: Table, bits: Table,
              max_bits: float) -> Config:
    """Each choice from `a` or `b` at random, repaired to the budget and filled."""
    child = {p: (a[p] if rng.random() < 0.5 else b[p]) for p in a}
    return knapsack.fill(repair(child, costs, bits, max_bits), noisy(rng, costs), bits,
                         max_bits)


def propose(rng: random.Random, parents: Sequence[Config], start: Config, costs: Table,
            bits: Table, max_bits: float) -> Config:
    """One proposal from the ranked `parents` (best first; `start` while there are none):
    a crossover of two of them, or a mutation of one (the best one half the time), with
    1 + Geometric(1/2) level switches."""
    pool = list(parents) or [start]
    if len(pool) >= 2 and rng.random() < CROSSOVER:
        a, b = rng.sample(pool[:ELITE], 2)
        return crossover(rng, a, b, costs, bits, max_bits)
    parent = pool[0] if rng.random() < 0.5 else rng.choice(pool[:ELITE])
    switches = 1
    while rng.random() < 0.5:
        switches += 1
    return mutate(rng, parent, costs, bits, max_bits, switches)


def key(cfg: Mapping[str, str]) -> tuple:
    return tuple(sorted(cfg.items()))


class EvolveSampler(optuna.samplers.BaseSampler):
    """Proposals by `propose` from the study's best complete trials (single-objective
    studies: budget mode), never over `max_bits` and never a plan seen before."""

    def __init__(self, costs: Table, bits: Table, max_bits: float | None, seed: int,
                 tries: int = 20):
        self.costs, self.bits, self.seed, self.tries = costs, bits, seed, tries
        self.max_bits = math.inf if max_bits is None else max_bits   # (no cap: the largest)
        self.start = knapsack.at_budget(costs, bits, self.max_bits) or \
            repair({p: ladder(bits[p])[0] for p in costs}, costs, bits, self.max_bits)

    def infer_relative_search_space(self, study, trial):
        return {p: CategoricalDistribution(list(row)) for p, row in self.costs.items()}

    def parents(self, study) -> list[Config]:
        """The COMPLETE trials' plans, best value first (ties: the earlier trial)."""
        sign = -1.0 if study.directions[-1] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values and set(t.params) >= set(self.costs)]
        done.sort(key=lambda t: (sign * t.values[-1], t.number))   # the quality
        return [{p: t.params[p] for p in self.costs} for t in done]

    def sample_relative(self, study, trial, search_space):
        if not search_space or trial.system_attrs.get("fixed_params"):
            return {}   # an enqueued (prior, retried) trial brings its own params
        rng = random.Random(f"{self.seed}:{trial.number}")
        seen = {key(t.params) for t in study.get_trials(deepcopy=False)
                if t.number != trial.number}
        parents = self.parents(study)
        cfg = self.start
        for _ in range(self.tries):
            cfg = propose(rng, parents, self.start, self.costs, self.bits, self.max_bits)
            if key(cfg) not in seen:
                break
        return cfg

    def sample_independent(self, study, trial, param_name, param_distribution):
        return seeded_choice(self.seed, trial, param_name, param_distribution)


def sampler(i: SamplerInputs) -> EvolveSampler:
    """The registered `evolve` sampler (autoq.search.SAMPLERS)."""
    return EvolveSampler(i.costs, i.bits, i.max_bits, i.seed)
