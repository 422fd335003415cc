"""KL divergence from the unquantized model: KL(fp || quantized), per token (LMs) or
per image (classifiers), averaged over a unit (a window, an image).

The fp model's distributions are needed for every trial, so they are kept as a
*reference*: per unit, for every row (token position, image) the top-k log
probabilities of the fp model with their indices, and the log of the mass left
outside them (the rest lumped into one bin). The quantized model's distribution is
lumped the same way (its mass outside those k indices), so

    KL_k = sum_{i in top-k} p_i (log p_i - log q_i) + p_rest (log p_rest - log q_rest)

which is never above the exact KL (merging bins cannot increase a divergence), and
equals it when k covers the support (classifiers with <= k classes). Sizes: rows x k x
(4 + 4) bytes per unit: 40 windows of 512 tokens at k = 64 are 10 MiB, versus 4 GB
for SmolLM2's full distributions. `scripts/kld_error.py` measures KL_k against the
exact KL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple

import torch

TOP_K = 64


class Top(NamedTuple):
    index: torch.Tensor      # (rows, k) int32: the fp model's most likely classes
    logp: torch.Tensor       # (rows, k) float32: their log probabilities
    rest: torch.Tensor       # (rows,) float32: log of the mass outside them (-inf: none)


def top_k(logits: torch.Tensor, k: int = TOP_K) -> Top:
    """The reference entry of one unit from the fp model's logits (rows, classes)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    k = min(k, logp.shape[-1])
    values, index = logp.topk(k, dim=-1)
    rest = torch.logsumexp(logp.scatter(-1, index, float("-inf")), dim=-1)
    return Top(index.to(torch.int32).cpu(), values.cpu(), rest.cpu())


def kl(logits: torch.Tensor, ref: Top) -> float:
    """Mean over rows of KL_k(fp || q) for the quantized model's logits (rows, classes)."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    index, logp, rest = (t.to(logq.device) for t in ref)
    index = index.long()
    lq_top = logq.gather(-1, index)
    lq_rest = torch.logsumexp(logq.scatter(-1, index, float("-inf")), dim=-1)
    top = (logp.exp() * (logp - lq_top)).sum(-1)
    p_rest = rest.exp()
    lumped = torch.where(p_rest > 0, p_rest * (rest - lq_rest), torch.zeros_like(rest))
    return float((top + lumped).mean())


def exact(logits: torch.Tensor, fp_logits: torch.Tensor) -> float:
    """The exact mean KL(fp || q) over rows (for checking KL_k)."""
    logp = torch.log_softmax(fp_logits.float(), dim=-1)
    logq = torch.log_softmax(logits.float(), dim=-1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def save(reference: Mapping[int, Top], path: Path) -> None:
    from ..io import write_atomic
    import io

    buf = io.BytesIO()
    torch.save({int(u): tuple(t) for u, t in reference.items()}, buf)
    write_atomic(path, buf.getvalue())


def load(path: Path) -> dict[int, Top] | None:
    """A saved reference, or None when there is none (or it is unreadable)."""
    try:
        raw = torch.load(path, weights_only=True)
        return {int(u): Top(*t) for u, t in raw.items()}
    except Exception:  # missing or damaged: measured again
        return None
