"""How well few tokens rank plans near the one-shot knapsack plan: the measurement behind
the budget search's fidelity schedule (autoq/search/fidelity.py).

    PYTHONPATH=. python scripts/fidelity.py --space results/benchmarks/smollm2-splits/space.yaml \\
        --data ../shared/data/wikitext-2-raw/wiki.valid.raw --limit 40 --bits 4.5 \\
        --candidates 32 --out results/benchmarks/search-vs-oneshot/fidelity.json

The one-shot sensitivity knapsack plan at --bits and --candidates mutations of it (the
`evolve` sampler's level switches, 1-4 of them, never over the budget) are scored on
every window of the search split; per window, the KL from the fp model on its first
128, 256 and 511 next-token predictions and the NLL. Then, for each candidate fidelity
(the first window cut to 128 or 256 tokens, 1, 2, 4, 8, 16 windows in the evaluator's
shuffled order), its rank correlation (Spearman) with the whole split's KL and ppl, and
how often the best plan on the whole split is in the fidelity's top quarter.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch

from autoq.search import evolve, knapsack
from autoq.tasks import kld
from search_vs_oneshot import problem, resolved   # scripts/ (this script's folder)

PREFIXES = (127, 255, 511)   # next-token predictions of a window's first 128, 256, 512 tokens


def per_row_kl(logits: torch.Tensor, ref: kld.Top) -> torch.Tensor:
    """KL_k(fp || q) per row (autoq.tasks.kld.kl without the mean)."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    index, logp, rest = ref
    index = index.long()
    top = (logp.exp() * (logp - logq.gather(-1, index))).sum(-1)
    lq_rest = torch.logsumexp(logq.scatter(-1, index, float("-inf")), dim=-1)
    p_rest = rest.exp()
    return top + torch.where(p_rest > 0, p_rest * (rest - lq_rest), torch.zeros_like(rest))


def score(ev, windows, refs) -> dict:
    """Per window: the mean KL over the first n predictions (n in PREFIXES) and the NLL."""
    out = {str(n): [] for n in PREFIXES}
    out["nll"] = []
    with torch.inference_mode():
        for w, ref in zip(windows, refs):
            logits = ev.loaded.model(w[None]).logits[0, :-1]
            rows = per_row_kl(logits, ref)
            for n in PREFIXES:
                out[str(n)].append(float(rows[:n].mean()))
            out["nll"].append(float(torch.nn.functional.cross_entropy(logits.float(), w[1:])))
    return out


def spearman(a, b) -> float:
    def ranks(x):  # the position of each value in sorted order (the inverse permutation)
        order = sorted(range(len(x)), key=x.__getitem__)
        return [float(k) for k in sorted(range(len(x)), key=order.__getitem__)]
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def fidelities(order: list[int]) -> dict[str, callable]:
    """name -> (a candidate's per-window record -> its value at that fidelity)."""
    first = order[0]
    out = {f"1 window x {n + 1} tokens": (lambda r, n=n: r[str(n)][first]) for n in PREFIXES}
    for k in (2, 4, 8, 16):
        out[f"{k} windows x 512"] = lambda r, k=k: sum(r["511"][i] for i in order[:k]) / k
    return out


def analyse(records: list[dict], order: list[int]) -> dict:
    full_kl = [sum(r["511"]) / len(r["511"]) for r in records]
    full_ppl = [math.exp(sum(r["nll"]) / len(r["nll"])) for r in records]
    best = min(range(len(records)), key=lambda i: full_kl[i])
    out = {}
    for name, f in fidelities(order).items():
        vals = [f(r) for r in records]
        top = sorted(range(len(vals)), key=lambda i: vals[i])[:max(1, len(vals) // 4)]
        out[name] = {"spearman_full_kl": spearman(vals, full_kl),
                     "spearman_full_ppl": spearman(vals, full_ppl),
                     "best_in_top_quarter": best in top}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--space", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--bits", type=float, default=4.5)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--sensitivity", default="results/benchmarks/smollm2-splits/sensitivity")
    ap.add_argument("--cache-dir", default="results/benchmarks/search-vs-oneshot/layer-cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.time()
    ev, choices, fixed, costs, bits = problem(a.model, a.space, a.data, a.seq_len, a.limit,
                                              a.sensitivity, a.cache_dir)
    weights = sum(ev.loaded.units()[n].weights for c in choices for n in c.stored)
    budget = a.bits * weights
    oneshot = knapsack.at_budget(costs, bits, budget)
    rng = random.Random(a.seed)
    plans = [("one-shot", oneshot)]
    seen = {evolve.key(oneshot)}
    while len(plans) < a.candidates + 1:
        switches = rng.choice((1, 1, 2, 4))
        cfg = evolve.mutate(rng, oneshot, costs, bits, budget, switches)
        if evolve.key(cfg) not in seen:
            seen.add(evolve.key(cfg))
            plans.append((f"{switches} switches", cfg))
    windows = ev.dataset.ids
    ev.apply({n: None for n in ev.shapes})
    with torch.inference_mode():
        refs = [kld.top_k(ev.loaded.model(w[None]).logits[0, :-1]) for w in windows]
    records = []
    for i, (name, cfg) in enumerate(plans):
        t = time.time()
        size = ev.apply(resolved(choices, fixed, cfg), fast=True)
        rec = {"name": name, "size_mib": size.size_mib, "predicted_bits": knapsack.totals(cfg, costs, bits)[1],
               **score(ev, windows, refs), "seconds": time.time() - t}
        records.append(rec)
        print(f"{i}: {name} {size.size_mib:.3f} MiB, KL {sum(rec['511']) / len(rec['511']):.4f} "
              f"({rec['seconds']:.0f} s)", flush=True)
        if len(records) >= 3:   # written after every candidate: a long run can be read midway
            write(a, records, budget, len(windows), time.time() - t0)
    print(json.dumps(json.loads(Path(a.out).read_text())["analysis"], indent=1))


def write(a, records: list[dict], budget: float, n_windows: int, seconds: float) -> None:
    order = list(range(n_windows))
    random.Random(0).shuffle(order)   # the evaluator's scoring order (Evaluator.split)
    result = {"command": "scripts/fidelity.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                           for k, v in vars(a).items()),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "budget_bits": budget, "order": order,
              "analysis": analyse(records, order), "candidates": records, "seconds": seconds}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
