"""Label placement without overlaps: pure geometry, in display pixels.

Each label is a box of known size anchored at a point. Greedily, in the order given
(the important labels first), each goes to the best of its candidate positions: rings
of 16 directions around its point, nearer rings first. The best is, in this order: the
least overlap with the labels placed before it, then the least part outside the axes,
then the least overlap with markers plus a small charge per ring (a label stays near its
point unless a marker is in the way). A crowd that leaves room nowhere near still gets
no overlap: the rings go out far. The drawer draws a thin leader line to a label placed
far out.
"""

from __future__ import annotations

import math
from typing import Sequence

Box = tuple[float, float, float, float]        # x0, y0, x1, y1

RINGS = (1.0, 2.0, 3.5, 5.5, 8.0, 11.0, 15.0, 20.0, 27.0)   # distances, in units of `gap`
ANGLES = (0, 180, 90, 270, 45, 135, 315, 225, 22.5, 157.5, 337.5, 202.5, 67.5, 112.5,
          292.5, 247.5)                        # right, left, above, below, then between
RING_COST = 0.03                               # per ring, as a share of the label's area


def overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _outside(b: Box, bounds: Box | None) -> float:
    if bounds is None:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1]) - overlap(b, bounds)


def candidates(x: float, y: float, w: float, h: float, r: float) -> list[Box]:
    """Boxes `r` away from (x, y) in each of ANGLES (y grows upwards, as on screen)."""
    out = []
    for a in ANGLES:
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        cx, cy = x + c * (r + w / 2), y + s * (r + h / 2)
        out.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return out


def place(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
          obstacles: Sequence[Box] = (), bounds: Box | None = None,
          gap: float = 8.0) -> list[Box]:
    """A box per label (same order as `anchors`), greedily, the earlier labels first."""
    placed: list[Box] = []
    for (x, y), (w, h) in zip(anchors, sizes):
        best, best_key = None, None
        for k, ring in enumerate(RINGS):
            for box in candidates(x, y, w, h, ring * gap):
                key = (sum(overlap(box, p) for p in placed), _outside(box, bounds),
                       sum(overlap(box, o) for o in obstacles) + k * RING_COST * w * h)
                if best_key is None or key < best_key:
                    best, best_key = box, key
            if best_key[0] == best_key[1] == 0 and best_key[2] <= k * RING_COST * w * h:
                break                          # clear of everything: no need to look further
        placed.append(best)
    return placed
