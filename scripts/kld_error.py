"""How far the top-k KL (autoq/kld.py: the fp model's k most likely tokens kept per
position, the rest lumped) is from the exact KL(fp || quantized), on real windows.

    python scripts/kld_error.py --data ../shared/data/wikitext-2-raw/wiki.valid.raw \\
        --windows 4 --out results/benchmarks/kld-error.json

For each config: the exact mean per-token KL over the windows and the top-k estimate for
several k, with its relative error (top-k is a lower bound: merging bins cannot increase
a divergence).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from autoq.tasks import kld
from autoq.pipeline.evaluator import EvalSettings, Evaluator
from autoq.quant import LayerConfig
from autoq.plan import uniform_plan

CONFIGS = (("uniform 8:192", "8:192", False), ("uniform 4:64", "4:64", False),
           ("uniform 4:64, whole model", "4:64", True), ("uniform 3:64", "3:64", False))
KS = (8, 16, 32, 64, 128, 256)


def logits_of(ev, windows) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [ev.loaded.model(w[None]).logits[0, :-1].float() for w in windows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", required=True)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.time()
    ev = Evaluator(EvalSettings(model=a.model, data=a.data, seq_len=a.seq_len, limit=a.windows))
    windows = ev.dataset.ids
    ev.apply({n: None for n in ev.shapes})
    fp = logits_of(ev, windows)
    tops = {k: [kld.top_k(f, k) for f in fp] for k in KS}
    rows = []
    for name, label, whole in CONFIGS:
        keep = {} if whole else ev.loaded.keep()
        plan = uniform_plan(a.model, LayerConfig.parse(label), ev.shapes, keep)
        ev.apply(ev.resolve(plan))
        q = logits_of(ev, windows)
        exact = sum(kld.exact(x, f) for x, f in zip(q, fp)) / len(q)
        row = {"config": name, "exact_kld": exact, "top_k": {}}
        for k in KS:
            est = sum(kld.kl(x, t) for x, t in zip(q, tops[k])) / len(q)
            row["top_k"][str(k)] = {"kld": est, "rel_error": (exact - est) / exact}
        rows.append(row)
        print(json.dumps(row))
    Path(a.out).write_text(json.dumps({
        "command": f"python scripts/kld_error.py --data {a.data} --windows {a.windows} "
                   f"--out {a.out}",
        "model": a.model, "windows": a.windows, "seq_len": a.seq_len,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "seconds": round(time.time() - t0, 1), "rows": rows},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
