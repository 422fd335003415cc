"""The multiple-choice knapsack behind the prior trials and the sensitivity sampler.

Each choice (a layer, or a group of layers) picks one option; option o costs
`cost[o]` (predicted loss increase, additive over layers) and `res[o]`, the resource
the study minimises (`autoq search --minimize`), additive too: exact bits under the
size objective, the latency model's seconds per token (image) under the latency one.
Minimising  cost + lam * res  per choice, for lam from 0 up, walks the lower convex
hull of (resource, predicted loss) from the most accurate config to the smallest (or
fastest) one. A size cap is always on bits (`within`). Pure functions, no model needed.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

Config = dict[str, str]  # choice param -> option label
Table = Mapping[str, Mapping[str, float]]  # choice param -> option label -> value


def pick(costs: Table, res: Table, lam: float) -> Config:
    return {p: min(costs[p], key=lambda o: (costs[p][o] + lam * res[p][o], res[p][o], o))
            for p in costs}


def totals(config: Config, costs, res) -> tuple[float, float]:
    return (sum(costs[p][o] for p, o in config.items()),
            sum(res[p][o] for p, o in config.items()))


def gaps(table: Table) -> list[float]:
    """Every nonzero difference between two options of one choice."""
    return [abs(a - b) for row in table.values() for a in row.values() for b in row.values()
            if a != b]


def hull(costs: Table, res: Table, steps: int = 400) -> list[Config]:
    """Distinct configs along the sweep, from the largest (slowest) to the smallest."""
    dc, dr = gaps(costs), gaps(res)
    if not dc or not dr:
        return [pick(costs, res, 0.0)]
    lo, hi = min(dc) / max(dr) / 10, max(dc) / min(dr) * 10
    lams = [0.0] + [lo * (hi / lo) ** (i / (steps - 1)) for i in range(steps)] + [math.inf]
    seen, out = set(), []
    for lam in lams:
        cfg = pick(costs, res, lam) if lam != math.inf else \
            {p: min(res[p], key=lambda o: (res[p][o], costs[p][o])) for p in res}
        key = tuple(sorted(cfg.items()))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def within(configs: Sequence[Config], costs, bits, max_bits: float | None) -> list[Config]:
    """The configs whose `bits` fit `max_bits` (None: all), else the smallest one (the
    last of equal size: in a size study, the hull's smallest end)."""
    if max_bits is None:
        return list(configs)
    fit = [c for c in configs if totals(c, costs, bits)[1] <= max_bits]
    return fit or [min(reversed(configs), key=lambda c: totals(c, costs, bits)[1])]


def under_cap(costs, res, bits, max_bits: float | None, growth: float = 4.0) -> Table:
    """The resource to minimise when the size cap is on other units (`bits`, a latency
    study under --max-size-mib): `res` if a config of its hull fits `max_bits`, else
    res + mu * bits for the least mu (growing x`growth`) whose hull has one that fits;
    `res` when none can (not even the smallest config fits)."""
    def fits(table) -> bool:
        return any(totals(c, costs, bits)[1] <= max_bits for c in hull(costs, table))

    if max_bits is None or fits(res):
        return res
    dr, db = gaps(res), gaps(bits)
    if not dr or not db:
        return res
    mu, top = min(dr) / max(db) / 10, max(dr) / min(db) * 10
    while mu <= top * growth:
        mixed = {p: {o: res[p][o] + mu * bits[p][o] for o in res[p]} for p in res}
        if fits(mixed):
            return mixed
        mu *= growth
    return res


def at_budget(costs, bits, budget: float) -> Config | None:
    """The config of the least predicted loss whose size is at most `budget`: the best
    hull config that fits, then `fill`ed up to the budget (the hull's points can lie far
    apart: one choice, such as a tied embedding table, may be a fifth of the model).
    None when even the smallest config is larger."""
    fits = [c for c in hull(costs, bits) if totals(c, costs, bits)[1] <= budget]
    if not fits:
        return None
    return fill(min(fits, key=lambda c: totals(c, costs, bits)), costs, bits, budget)


def fill(config: Config, costs, bits, budget: float) -> Config:
    """Spend what `budget` leaves: one choice at a time, the upgrade that lowers the
    predicted loss most per added bit and still fits, until none does."""
    cfg, used = dict(config), totals(config, costs, bits)[1]
    while True:
        moves = [((costs[p][cfg[p]] - costs[p][o]) / (bits[p][o] - bits[p][cfg[p]]), p, o)
                 for p in cfg for o in costs[p]
                 if costs[p][o] < costs[p][cfg[p]] and bits[p][o] > bits[p][cfg[p]]
                 and used + bits[p][o] - bits[p][cfg[p]] <= budget]
        if not moves:
            return cfg
        _, p, o = max(moves)
        used += bits[p][o] - bits[p][cfg[p]]
        cfg[p] = o


def spread(configs: Sequence[Config], costs, res, n: int) -> list[Config]:
    """`n` configs evenly spaced in the resource along the hull (always both ends)."""
    if len(configs) <= n:
        return list(configs)
    sizes = [totals(c, costs, res)[1] for c in configs]
    lo, hi = min(sizes), max(sizes)
    chosen: list[int] = []
    for i in range(n):
        want = hi - (hi - lo) * i / max(n - 1, 1)  # n == 1: the largest
        best = min((j for j in range(len(configs)) if j not in chosen),
                   key=lambda j: abs(sizes[j] - want))
        chosen.append(best)
    return [configs[j] for j in sorted(chosen)]


def prior(costs, res, n: int, max_cost: float | None = None, max_bits: float | None = None,
          bits=None) -> list[Config]:
    """`n` first trials: spread over the whole range of the resource, plus (given a
    quality budget `max_cost` in predicted loss) the smallest (fastest) hull configs that
    meet it and their neighbours, where the answer most likely is. `max_bits` drops the
    configs too big by `bits` (None: the resource is the bits)."""
    configs = within(hull(costs, res), costs, res if bits is None else bits, max_bits)
    if max_cost is None or n < 3:
        return spread(configs, costs, res, n)
    ok = [i for i, c in enumerate(configs) if totals(c, costs, res)[0] <= max_cost]
    edge = max(ok) if ok else 0  # the smallest predicted-feasible config
    near = [configs[i] for i in range(max(0, edge - 1), min(len(configs), edge + 2))]
    rest = spread(configs, costs, res, max(2, n - len(near)))
    out, seen = [], set()
    for c in near + rest:
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out[:n]
