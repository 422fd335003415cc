"""What a plan quantizes, out of everything that holds weights: printed by every
eval, apply and search, and carried in their JSON.

    coverage = quantized layers / weight-bearing layers, quantized weights / all weights,
               and the largest groups left in full precision with the reason

Weight-bearing layers are the quantizable matrices (autoq.quant.layers) plus the
parameters no layer type can quantize (convolutions, non-linear routers, position
and class tokens); 1-D tensors (norms, biases) are not counted as weights.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

KEPT_ROLES = {"head": "the model's head", "embedding": "an embedding", "router": "a router"}
NOT_SEARCHED = "not matched by the search space"


def kept_by_default(roles: Mapping[str, str]) -> dict[str, str]:
    """Layers `default` / `--uniform` skip unless named (or --whole-model): name -> why."""
    return {n: KEPT_ROLES[r] for n, r in roles.items() if r in KEPT_ROLES}


def coverage(units: Mapping, unsupported: Mapping[str, tuple[int, str]],
             resolved: Mapping, reasons: Mapping[str, str], ties: Iterable[Iterable[str]] = (),
             top: int = 5) -> dict:
    """The coverage of a resolved plan (layer -> config or None). `reasons`: why a layer
    left in full precision was (head, embedding, router, not searched, invalid shape);
    a layer with no reason was simply not planned. Layers that share one matrix
    (`ties`) count its weights once."""
    counted = {n: u.weights for n, u in units.items()}
    reasons = dict(reasons)
    for group in map(list, ties):
        kept = [n for n in group if resolved.get(n) is None]
        if len(kept) == len(group):  # one fp matrix: once, with both reasons
            reasons[group[0]] = " / ".join(dict.fromkeys(reasons.get(n, "not planned")
                                                         for n in group)) + " (tied)"
        for n in (group[1:] if len(kept) in (0, len(group)) else []):
            counted[n] = 0
    qweights = sum(w for n, w in counted.items() if resolved.get(n) is not None)
    all_weights = sum(counted.values()) + sum(w for w, _ in unsupported.values())
    groups: Counter = Counter()
    for n, w in counted.items():
        if resolved.get(n) is None and w:
            groups[reasons.get(n, "not planned")] += w
    for name, (w, why) in unsupported.items():
        groups[f"unsupported: {why}"] += w
    quantized = sum(1 for n in units if resolved.get(n) is not None)
    return {"quantized_layers": quantized, "weight_bearing_layers": len(units) + len(unsupported),
            "quantized_weights": qweights, "all_weights": all_weights,
            "quantized_weight_share": qweights / all_weights if all_weights else 0.0,
            "kept": {why: {"weights": w, "share": w / all_weights if all_weights else 0.0}
                     for why, w in groups.most_common(top)}}


def of_model(loaded, resolved: Mapping, reasons: Mapping[str, str] | None = None) -> dict:
    """`coverage` of a resolved plan on a loaded model (default reasons: what
    `default` and `--uniform` leave alone)."""
    qm = loaded.quantized
    return coverage(qm.units, qm.unsupported, resolved,
                    loaded.keep() if reasons is None else reasons, qm.tied_groups())


def summary(cov: Mapping) -> str:
    """One line for the terminal."""
    kept = "; ".join(f"{why} {v['share']:.1%}" for why, v in cov["kept"].items())
    return (f"quantized {cov['quantized_layers']}/{cov['weight_bearing_layers']} weight-bearing "
            f"layers, {cov['quantized_weight_share']:.1%} of the weights"
            + (f"; kept in full precision: {kept}" if kept else ""))
