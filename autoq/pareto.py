"""Pareto fronts: pure functions over points (no plotting, no files).

`senses[i]` says whether coordinate i is minimised ("min") or maximised ("max").
A point dominates another if it is at least as good everywhere and strictly
better somewhere; identical points do not dominate each other, so ties are all
kept on the front.
"""

from __future__ import annotations

from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    better = False
    for x, y, s in zip(a, b, senses):
        if s == "max":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better


def front_indices(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, senses) for j, q in enumerate(points) if j != i)]
