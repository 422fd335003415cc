"""Why the CPU latency model times layers inside the decode (issue 23): each SmolLM2 layer
shape timed alone (`bench_layer`, weights hot in cache) and inside the model's decode
(`autoq.serve.calibrate.in_model`), per option, with each option's rest term and what
the whole calibration took.

    .venv/bin/python scripts/latency_probe.py --out results/benchmarks/cpu-serving/latency-probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from autoq import pipeline
from autoq.quant import LayerConfig, label_of
from autoq.serve import calibrate, require_backend
from autoq.serve.backend import served_by
from autoq.serve.latency import LatencyModel, bench_layer, pricing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--options", default="3:64,4:64,8:64")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    loaded = pipeline.load(a.model, "cpu", torch.float32)
    backend = require_backend("auto", loaded.device)
    options = [LayerConfig.parse(o) for o in a.options.split(",")]
    shapes, ops = loaded.shapes(), pricing(loaded)
    t = time.perf_counter()
    lat = LatencyModel.for_model(loaded, options, backend, None)
    calibration_s = time.perf_counter() - t
    timed = calibrate.in_model(loaded, [None, *options], backend, {})
    rows = []
    for cfg in (None, *options):
        for fin, fout in sorted({shapes[n] for n in shapes if ops[n][0] == "matmul"}):
            inside = [s for n, s in timed[label_of(cfg)].layers.items() if shapes[n] == (fin, fout)]
            if not inside:
                continue
            alone = bench_layer(fin, fout, cfg, served_by(cfg, fin, fout, backend),
                                loaded.device, loaded.dtype, (1, 1))
            rows.append({"shape": f"{fin}x{fout}", "option": label_of(cfg),
                         "alone_us": alone * 1e6, "in_decode_us": statistics.fmean(inside) * 1e6})
            print(f"{fin}x{fout} {label_of(cfg)}: alone {alone * 1e6:.1f} us, in the decode "
                  f"{rows[-1]['in_decode_us']:.1f} us")
    out = {"model": a.model, "backend": backend, "machine": f"{platform.machine()}, "
           f"{torch.get_num_threads()} threads", "torch": torch.__version__,
           "calibration_seconds": calibration_s,
           "rest_ms": {k: v * 1e3 for k, v in lat.rest.items()}, "layers": rows}
    print(f"calibration {calibration_s:.1f} s; rest per option (ms): "
          + ", ".join(f"{k} {v:.2f}" for k, v in out["rest_ms"].items()))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
