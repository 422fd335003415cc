"""The size of a whole-model plan on the Llama-3.2-1B-Instruct architecture (its public
config values; random weights, which are valid for size): uniform NBITS:GROUP on every
linear layer and the tied embedding/lm_head table (one tensor), quantized by autoq's own
path (HQQ, on CPU), measured at 16-bit storage for unquantized tensors. HQQ's optimizer
is off unless --optimize: the packed bytes, scales and zeros have the same shapes either way.

    python scripts/llama1b_size.py --uniform 4:64 --out results/benchmarks/llama1b-whole-model-size.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import torch

from autoq.quant import LayerConfig
from autoq.plan import uniform_plan
from autoq.quant.size import measure


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_common",
                                                  Path(__file__).with_name("gpu_check_common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uniform", default="4:64")
    ap.add_argument("--out", required=True)
    ap.add_argument("--optimize", action="store_true",
                    help="run HQQ's half-quadratic optimizer (slow on a CPU: ~10 min here); "
                    "the bytes do not depend on it, only the values (random weights anyway)")
    a = ap.parse_args()
    if not a.optimize:   # the same packing without HQQ's solver (where it is read)
        from autoq.quant import hqq_layers
        packing = hqq_layers.hqq_config
        hqq_layers.hqq_config = lambda cfg, optimize=True: packing(cfg, optimize=False)
    check = gpu_check()
    t0 = time.time()
    cpu = torch.device("cpu")
    loaded = check.build_llama(check.llama_config(tiny=False), cpu, torch.float32,
                               "llama-3.2-1b-architecture")
    fp = measure(loaded.quantized)
    routers = {n: why for n, why in loaded.keep().items() if why == "a router"}
    plan = uniform_plan(loaded.spec, LayerConfig.parse(a.uniform), loaded.shapes(), routers)
    resolved = plan.resolve(loaded.shapes(), routers)
    loaded.quantized.apply(resolved, device=cpu, dtype=torch.float32)
    size = measure(loaded.quantized)
    result = {"command": f"python scripts/llama1b_size.py --uniform {a.uniform} --out {a.out}"
                         + (" --optimize" if a.optimize else ""),
              "hqq_optimizer": a.optimize,
              "architecture": check.LLAMA_3_2_1B, "plan": f"uniform {a.uniform} on every linear "
              "layer and the tied embedding/lm_head (one tensor)",
              "quantized_layers": sum(c is not None for c in resolved.values()),
              "skipped": plan.extra.get("skipped", {}),
              "fp_size_mib_16bit": fp.size_mib, "size_mib": size.size_mib,
              "memory_mib": size.memory_mib, "bits_per_weight": size.bits_per_weight,
              "model_bits_per_weight": size.model_bits_per_weight,
              "quantized_params": size.quantized_params, "total_params": size.total_params,
              "seconds": round(time.time() - t0, 1),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "architecture"}, indent=2))


if __name__ == "__main__":
    main()
