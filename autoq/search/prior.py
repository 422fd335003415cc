"""The sensitivity prior: per-layer sensitivities -> per-choice costs, sizes and (when
the study minimises latency) times -> the knapsack configs the study starts from (the
*prior trials*).

Everything here but `enqueue` is a pure function of its arguments: the choices of
the space, the layers' shapes, the measured sensitivities and reference points, and
for a latency study the latency model (its tables, measured before).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import optuna

from .. import study as contract
from ..quant import FP, LayerConfig
from ..metrics import Target
from . import knapsack
from .space import Choice

MIB_BITS = 2**20 * 8


@dataclass(frozen=True)
class Prior:
    costs: dict[str, dict[str, float]]   # param -> option label -> predicted loss
    bits: dict[str, dict[str, float]]    # param -> option label -> bits (additive)
    budget: float | None    # the target as a measured loss (None: no reachable target)
    scale: float | None     # measured loss per predicted loss, from the uniform baselines
    max_bits: float | None  # --max-size-mib as bits left for the searched layers
    fp: float | None        # the unquantized model's quality
    resource: dict[str, dict[str, float]]  # param -> option -> what the knapsack minimises:
    #                      `bits` (size), or seconds per token (image) (latency; see build)


def layer_bits(shape: tuple[int, int], cfg: LayerConfig | None, fp_bits: float) -> float:
    """A matrix's stored bits, exactly as sizes measure them (autoq.quant.size)."""
    fin, fout = shape
    return cfg.stored_bits(fin, fout) if cfg else fp_bits * fin * fout


def costs_and_bits(choices: Sequence[Choice], shapes: Mapping[str, tuple[int, int]],
                   sens: Mapping, fp_bits: float) -> tuple[dict, dict]:
    """Per choice and option: the summed sensitivity of its layers and the bits of the
    matrices it stores (a tied embedding/head once)."""
    costs, bits = {}, {}
    for c in choices:
        costs[c.param], bits[c.param] = {}, {}
        for cfg, label in zip(c.options, c.labels):
            costs[c.param][label] = sum(sens["layers"][n][label] for n in c.layers)
            bits[c.param][label] = sum(layer_bits(shapes[n], cfg, fp_bits) for n in c.stored)
    return costs, bits


def choice_seconds(choices: Sequence[Choice], latency) -> dict[str, dict[str, float]]:
    """Per choice and option: the seconds per token (image) its layers add, each at its
    share of the steps, as served (a layer the backend cannot serve at that option at
    its fallback's time), with their share of that option's rest term (on a CPU each
    option has its own): summed over the choice's layers."""
    return {c.param: {label: sum(latency.layer_time(n, cfg) + latency.rest_share(n, cfg)
                                 for n in c.layers)
                      for cfg, label in zip(c.options, c.labels)} for c in choices}


def loss_scale(baselines: Mapping[str, Mapping], sens: Mapping, target: Target) -> float | None:
    """Measured quality loss (`Target.loss`) per predicted loss on the uniform baselines
    (the median); None without baselines worse than fp."""
    fp = baselines.get(FP, {}).get(target.metric)
    if fp is None:
        return None
    ratios = []
    for label, m in baselines.items():
        cost = sum(row.get(label, 0.0) for row in sens["layers"].values())
        loss = target.loss(m.get(target.metric), fp) if label != FP else None
        if cost > 0 and loss is not None and loss > 0:
            ratios.append(loss / cost)
    return sorted(ratios)[len(ratios) // 2] if ratios else None


def max_choice_bits(choices: Sequence[Choice], shapes: Mapping[str, tuple[int, int]],
                    fp_size_mib: float | None, max_size_mib: float | None,
                    fp_bits: float) -> float | None:
    """--max-size-mib in the knapsack's units: the bits left for the searched layers
    once everything else (measured on the unquantized model) is counted."""
    if max_size_mib is None or fp_size_mib is None:
        return None
    searched = {n for c in choices for n in c.stored}
    fixed = fp_size_mib * MIB_BITS - sum(layer_bits(shapes[n], None, fp_bits) for n in searched)
    return max_size_mib * MIB_BITS - fixed


def budget(target: Target, fp: float | None) -> float | None:
    """The target as a loss against fp, when fp reaches it (else no config can)."""
    if fp is None or target.value is None or not target.reached(fp) or fp == target.value:
        return None
    return target.loss(target.value, fp)


def build(choices: Sequence[Choice], shapes: Mapping[str, tuple[int, int]], sens: Mapping,
          baselines: Mapping[str, Mapping], target: Target, fp_bits: float,
          latency=None) -> Prior:
    """The prior of a size study, or with `latency` (a LatencyModel) of a latency study:
    the same knapsack with seconds per token in place of bits (the size cap stays bits;
    when no fast config fits it, the seconds are mixed with a little of the bits:
    `knapsack.under_cap`)."""
    costs, bits = costs_and_bits(choices, shapes, sens, fp_bits)
    fp = baselines.get(FP, {})
    max_bits = max_choice_bits(choices, shapes, fp.get("size_mib"), target.max_size_mib, fp_bits)
    resource = bits if latency is None else \
        knapsack.under_cap(costs, choice_seconds(choices, latency), bits, max_bits)
    return Prior(costs, bits, budget(target, fp.get(target.metric)),
                 loss_scale(baselines, sens, target), max_bits, fp.get(target.metric), resource)


def count(trials: int, requested: int | None) -> int:
    """How many prior trials: as asked, else a third of the study (2..10)."""
    return requested if requested is not None else max(2, min(10, trials // 3))


def configs(prior: Prior, n: int) -> list[dict[str, str]]:
    max_cost = prior.budget / prior.scale if prior.budget is not None and prior.scale else None
    return knapsack.prior(prior.costs, prior.resource, n, max_cost, prior.max_bits, prior.bits)


def enqueue(study: optuna.Study, prior: Prior, n: int,
            chosen: list[dict[str, str]] | None = None) -> int | None:
    """Enqueue the prior configs once per study (`chosen`, else `configs(prior, n)`);
    how many (None: done before)."""
    if contract.attr(study.user_attrs, contract.PRIOR_ENQUEUED):
        return None
    chosen = configs(prior, n) if chosen is None else chosen
    for cfg in chosen:
        study.enqueue_trial(cfg, user_attrs={contract.ORIGIN: "prior"}, skip_if_exists=True)
    study.set_user_attr(contract.PRIOR_ENQUEUED, len(chosen))
    return len(chosen)
