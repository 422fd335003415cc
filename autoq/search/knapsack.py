"""The multiple-choice knapsack behind the prior trials and the sensitivity sampler.

Each choice (a layer, or a group of layers) picks one option; option o costs
`cost[o]` (predicted loss increase, additive over layers) and `bits[o]` (exact
bits under the additive size model). Minimising  cost + lam * bits  per choice,
for lam from 0 up, walks the lower convex hull of (size, predicted loss) from
the most accurate config to the smallest one. Pure functions, no model needed.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

Config = dict[str, str]  # choice param -> option label


def pick(costs: Mapping[str, Mapping[str, float]], bits: Mapping[str, Mapping[str, float]],
         lam: float) -> Config:
    return {p: min(costs[p], key=lambda o: (costs[p][o] + lam * bits[p][o], bits[p][o], o))
            for p in costs}


def totals(config: Config, costs, bits) -> tuple[float, float]:
    return (sum(costs[p][o] for p, o in config.items()),
            sum(bits[p][o] for p, o in config.items()))


def hull(costs: Mapping[str, Mapping[str, float]], bits: Mapping[str, Mapping[str, float]],
         steps: int = 400) -> list[Config]:
    """Distinct configs along the sweep, from the largest to the smallest."""
    dc = [abs(a - b) for p in costs for a in costs[p].values() for b in costs[p].values() if a != b]
    db = [abs(a - b) for p in bits for a in bits[p].values() for b in bits[p].values() if a != b]
    if not dc or not db:
        return [pick(costs, bits, 0.0)]
    lo, hi = min(dc) / max(db) / 10, max(dc) / min(db) * 10
    lams = [0.0] + [lo * (hi / lo) ** (i / (steps - 1)) for i in range(steps)] + [math.inf]
    seen, out = set(), []
    for lam in lams:
        cfg = pick(costs, bits, lam) if lam != math.inf else \
            {p: min(bits[p], key=lambda o: (bits[p][o], costs[p][o])) for p in bits}
        key = tuple(sorted(cfg.items()))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def at_budget(costs, bits, budget: float) -> Config | None:
    """The config of the least predicted loss whose size is at most `budget`, along the
    hull (None when even the smallest config is larger)."""
    fits = [c for c in hull(costs, bits) if totals(c, costs, bits)[1] <= budget]
    return min(fits, key=lambda c: totals(c, costs, bits)) if fits else None


def spread(configs: Sequence[Config], costs, bits, n: int) -> list[Config]:
    """`n` configs evenly spaced in size along the hull (always both ends)."""
    if len(configs) <= n:
        return list(configs)
    sizes = [totals(c, costs, bits)[1] for c in configs]
    lo, hi = min(sizes), max(sizes)
    chosen: list[int] = []
    for i in range(n):
        want = hi - (hi - lo) * i / max(n - 1, 1)  # n == 1: the largest
        best = min((j for j in range(len(configs)) if j not in chosen),
                   key=lambda j: abs(sizes[j] - want))
        chosen.append(best)
    return [configs[j] for j in sorted(chosen)]


def prior(costs, bits, n: int, max_cost: float | None = None, max_bits: float | None = None
          ) -> list[Config]:
    """`n` first trials: spread over the whole size range, plus (given a quality
    budget `max_cost` in predicted loss) the smallest hull configs that meet it and
    their neighbours, where the answer most likely is. `max_bits` drops too-big ones."""
    configs = hull(costs, bits)
    if max_bits is not None:
        configs = [c for c in configs if totals(c, costs, bits)[1] <= max_bits] or configs[-1:]
    if max_cost is None or n < 3:
        return spread(configs, costs, bits, n)
    ok = [i for i, c in enumerate(configs) if totals(c, costs, bits)[0] <= max_cost]
    edge = max(ok) if ok else 0  # the smallest predicted-feasible config
    near = [configs[i] for i in range(max(0, edge - 1), min(len(configs), edge + 2))]
    rest = spread(configs, costs, bits, max(2, n - len(near)))
    out, seen = [], set()
    for c in near + rest:
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out[:n]
