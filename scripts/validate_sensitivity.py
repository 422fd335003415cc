"""Check autoq's sensitivity ranking against the ground truth on a sample of layers.

Ground truth: quantize ONLY that layer (others fp), measure the perplexity increase
on the first --windows windows. Prediction: autoq's Fisher-weighted error for the
same (layer, option), computed exactly as `autoq search` does (and cached where
the search finds it). Reports Spearman rank correlation and writes a JSON file.

    python scripts/validate_sensitivity.py --out results/benchmarks/smollm2-wikitext2 \
        --space results/benchmarks/smollm2-wikitext2/space.yaml --option 3:64 --layers 16
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import time
from pathlib import Path

import torch

from autoq.pipeline.evaluator import EvalSettings, Evaluator
from autoq.io import write_json
from autoq.quant import LayerConfig
from autoq.search.sensitivity import measure_or_load
from autoq.search.space import load_space


def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for pos, i in enumerate(order):
        r[i] = float(pos)
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--space", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--option", default="3:64")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.time()
    ev = Evaluator(EvalSettings(model=a.model, task="wikitext2", data=a.data, seq_len=a.seq_len,
                                limit=a.limit, cache_dir=str(Path(a.out) / "layer-cache")))
    choices, _ = load_space(a.space).bind(ev.shapes)
    sens = measure_or_load(ev, {n: c.options for c in choices for n in c.layers},
                           Path(a.out) / "sensitivity")
    label = a.option
    cfg = LayerConfig.parse(label)
    names = sorted(n for n in sens["layers"] if label in sens["layers"][n])
    sample = sorted(random.Random(a.seed).sample(names, a.layers))
    wins = ev.dataset[: a.windows]

    def nll_of(resolved) -> float:
        ev.apply(resolved)
        with torch.inference_mode():
            nlls = [ev.task.loss(ev.loaded, (w[None], w[None])).item() for w in wins]
            return sum(nlls) / len(nlls)

    fp = {n: None for n in ev.shapes}
    base = nll_of(fp)
    rows = []
    for name in sample:
        measured = nll_of({**fp, name: cfg}) - base
        rows.append({"layer": name, "predicted": sens["layers"][name][label],
                     "measured_delta_nll": measured})
        print(f"{name:40s} predicted {rows[-1]['predicted']:.3e}  measured {measured:+.4f}")
    rho = spearman([r["predicted"] for r in rows], [r["measured_delta_nll"] for r in rows])
    result = {"option": label, "layers": rows, "spearman": rho, "fp_ppl_windows": math.exp(base),
              "windows": a.windows, "seq_len": a.seq_len, "method": sens["method"],
              "command": "python scripts/validate_sensitivity.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()),
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads",
              "versions": {"torch": torch.__version__}, "seconds": time.time() - t0}
    write_json(Path(a.out) / f"sensitivity-validation-{label.replace(':', 'g')}.json", result)
    print(f"Spearman rank correlation (predicted vs measured), {len(rows)} layers: {rho:.3f}")


if __name__ == "__main__":
    main()
