"""Which sampler should budget mode use by default? A simulation on SmolLM2's own tables
(issue 22).

    python scripts/sampler_sim.py [--trials 200] [--seeds 3] [--bits 4.0,4.5,5.5] \
        [--out results/benchmarks/search-vs-oneshot/sampler-sim.json]

The 211 choices of the benchmark space (every decoder linear, the tied embedding/head as
one), their exact stored bits, and two measured tables from
results/benchmarks/search-vs-oneshot: the samplers are given the Fisher sensitivities
(what a study gives them), and a plan's "true" loss is the sum over its choices of the
measured single-layer KL times a fixed log-normal factor per choice (sigma WORLD: what a
one-layer KL on few tokens gets wrong about a whole plan; one such world per seed),
times a 1% log-normal measurement noise per trial (an additive stand-in for scoring;
real losses also interact, which the benchmark itself measures). Each sampler runs in an
in-memory Optuna study at a size budget of B bits per searched weight, starting, as
`autoq search` does in budget mode, from the two one-shot knapsack plans at the budget
(on the sensitivities and on the unperturbed single-layer KLs). Reported per (budget,
sampler): the best true loss after 25, 50, 100 and all trials, and the share of the gap
between the better one-shot plan and the knapsack optimum on the true table (what a
perfect signal would give) that the sampler closed.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import random
import time
from pathlib import Path

import optuna

from autoq.quant import LayerConfig
from autoq.search import SAMPLERS, knapsack
from autoq.search.sampler import SamplerInputs

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "results/benchmarks/search-vs-oneshot"
SHAPES = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192),
          "o_proj": (576, 576), "gate_proj": (576, 1536), "up_proj": (576, 1536),
          "down_proj": (1536, 576), "lm_head": (576, 49152)}   # (in, out): SmolLM2-135M
NOISE = 0.01
WORLD = 0.5


def tables(bench: Path) -> tuple[dict, dict, dict]:
    """(predicted: Fisher sensitivity, true: single-layer KL, bits) per choice and option."""
    true = json.loads(Path(glob.glob(str(bench / "baselines/single-layer-kl-*.json"))[0])
                      .read_text())
    sens = json.loads(Path(glob.glob(str(bench / "sensitivity/sensitivity-*.json"))[0])
                      .read_text())["layers"]
    predicted, bits = {}, {}
    for choice, row in true.items():
        layers = [choice, "model.embed_tokens"] if choice == "lm_head" else [choice]
        predicted[choice] = {o: sum(sens[n][o] for n in layers) for o in row}
        fin, fout = SHAPES[choice.rsplit(".", 1)[-1]]
        bits[choice] = {o: 16.0 * fin * fout if o == "fp" else
                        float(LayerConfig.parse(o).stored_bits(fin, fout)) for o in row}
    return predicted, true, bits


def run(name: str, predicted, true, bits, budget: float, seeds, trials: int, seed: int):
    inputs = SamplerInputs(predicted, bits, None, lambda t: None, scale=None, max_bits=budget,
                           seed=seed, population=16, at_size=True)
    study = optuna.create_study(direction="minimize", sampler=SAMPLERS[name](inputs))
    for cfg in seeds:
        study.enqueue_trial(cfg)
    noise = random.Random(seed)
    best, curve = math.inf, []

    def objective(trial):
        nonlocal best
        cfg = {p: trial.suggest_categorical(p, list(bits[p])) for p in bits}
        if knapsack.totals(cfg, true, bits)[1] > budget:
            raise optuna.TrialPruned()          # over the budget: not a plan (counted)
        loss = knapsack.totals(cfg, true, bits)[0]
        best = min(best, loss)
        return loss * math.exp(NOISE * noise.gauss(0, 1))

    t = time.perf_counter()
    study.optimize(lambda tr: (r := objective(tr), curve.append(best))[0],
                   n_trials=trials, catch=())
    over = sum(1 for tr in study.trials if tr.state == optuna.trial.TrialState.PRUNED)
    return curve, over, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--bits", default="4.0,4.5,5.5")
    ap.add_argument("--samplers", default="evolve,sensitivity,random,nsga2")
    ap.add_argument("--bench", type=Path, default=BENCH, help="where the two tables are")
    ap.add_argument("--out", type=Path, default=BENCH / "sampler-sim.json")
    a = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    predicted, kl, bits = tables(a.bench)
    weights = sum(math.prod(SHAPES[p.rsplit(".", 1)[-1]]) for p in bits)
    rows = []
    for b in (float(x) for x in a.bits.split(",")):
        budget = b * weights
        seeds = [c for c in (knapsack.at_budget(predicted, bits, budget),
                             knapsack.at_budget(kl, bits, budget)) if c is not None]
        for seed in range(a.seeds):
            w = random.Random(f"world:{seed}")
            true = {p: {o: v * math.exp(WORLD * f) for o, v in row.items()}
                    for p, row in kl.items() for f in [w.gauss(0, 1)]}
            oneshot = min(knapsack.totals(c, true, bits)[0] for c in seeds)
            optimum = knapsack.totals(knapsack.at_budget(true, bits, budget), true, bits)[0]
            for name in a.samplers.split(","):
                curve, over, secs = run(name, predicted, true, bits, budget, seeds, a.trials,
                                        seed)
                at = {n: curve[min(n, len(curve)) - 1] for n in (25, 50, 100, a.trials)}
                closed = (oneshot - at[a.trials]) / (oneshot - optimum) if oneshot > optimum \
                    else None
                rows.append({"bits": b, "sampler": name, "seed": seed, "best_after": at,
                             "gap_closed": closed, "over_budget_proposals": over,
                             "seconds": secs, "oneshot": oneshot, "optimum": optimum})
                print(f"{b} bits {name:11s} world {seed}: best {at[a.trials]:.5f} (one-shot "
                      f"{oneshot:.5f}, optimum {optimum:.5f}: gap closed "
                      f"{closed if closed is None else round(closed, 3)}); after 25/50/100: "
                      + " / ".join(f"{at[n]:.5f}" for n in (25, 50, 100))
                      + f"; {over} over budget; {secs:.0f} s", flush=True)
    summary = {}
    for r in rows:
        if r["gap_closed"] is not None:
            summary.setdefault(f"{r['bits']:g} bits", {}).setdefault(r["sampler"], []).append(
                r["gap_closed"])
    summary = {b: {s: sum(v) / len(v) for s, v in d.items()} for b, d in summary.items()}
    print(json.dumps(summary, indent=1))
    a.out.write_text(json.dumps({"command": "python scripts/sampler_sim.py "
                                 f"--trials {a.trials} --seeds {a.seeds} --bits {a.bits}",
                                 "noise": NOISE, "world": WORLD, "mean_gap_closed": summary,
                                 "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
