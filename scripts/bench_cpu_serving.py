"""CPU serving benchmark (issue 23): batch-1 greedy decode of 128 new tokens after a short
prompt, SmolLM2-135M-Instruct, every engine in one run on the same cores.

    python scripts/bench_cpu_serving.py --plan u4=PLAN.json --plan best=PLAN.json \
        --llama-cpp DIR [--threads N] [--out results/benchmarks/cpu-serving]

Rows: the unquantized model (fp32, bf16), each plan on HQQ's own torch forward
(`--backend hqq`, fp32), on torch-int4 (`autoq.load`'s default: a bf16 model; and in fp32),
and the same plans exported to GGUF (`autoq export`) in llama.cpp (scripts/llama_cpp_time,
AMX repacking off and on). Each autoq row runs in its own process: the StaticCache loop
of autoq.serve.speed (eager; and the compiled step for fp32 and torch-int4 bf16, its
compile time reported apart), 1 warm-up, then the median of REPEATS runs. Memory is the
resident weight memory (autoq's serving report `memory_mib`; llama.cpp: the GGUF file,
which it maps); GB/s = those bytes x tokens/s. Writes summary.json and rows.jsonl into
--out, and saves the plans' folders and GGUF files under --work (not committed).
SmolLM2's decoder weights were stored as 4-bit blocks of 32 (GGUF Q4_1): 4-bit HQQ is
near-lossless on it by construction; this benchmark is about speed and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS, REPEATS = 128, 5
PROMPT = "The history of the city begins in the early medieval period, when"


# ---- one autoq row (in its own process) -------------------------------------------------
def decode(loaded, mode: str) -> dict:
    import torch

    from autoq.serve.speed import StaticDecoder

    dec = StaticDecoder(loaded, NEW_TOKENS, mode,
                        ids=loaded.tokenizer(PROMPT, return_tensors="pt").input_ids)
    t = time.perf_counter()
    dec.run()                                   # warm-up (the compile, for "compiled")
    first = time.perf_counter() - t
    secs = [dec.run()[0] for _ in range(REPEATS)]
    ms = 1e3 * statistics.median(secs) / (NEW_TOKENS - 1)
    return {"engine": f"static cache, {mode}", "ms_per_token": ms, "tokens_per_s": 1e3 / ms,
            "best_ms_per_token": 1e3 * min(secs) / (NEW_TOKENS - 1),
            "warmup_s": first, "threads": torch.get_num_threads(),
            "tokens": dec.run()[1][0, :16].tolist()}


def row(spec: dict) -> dict:
    import torch

    from autoq import pipeline

    torch.set_num_threads(spec["threads"])
    from autoq.quant.size import measure

    if spec["plan"] is None:   # the unquantized model
        loaded = pipeline.load("smollm2", "cpu", getattr(torch, spec["dtype"]))
        memory = measure(loaded.quantized).memory_mib
        serving = {"backend": "none (unquantized)"}
    else:
        loaded, serving = pipeline.open_folder(spec["folder"], "cpu", spec["backend"],
                                               spec["dtype"])
        memory = serving["memory_mib"]
    out = {**spec, "dtype": str(loaded.dtype).removeprefix("torch."), "memory_mib": memory,
           "backend": serving["backend"]}
    runs = [decode(loaded, mode) for mode in spec["modes"]]
    for r in runs:
        r["gb_per_s"] = memory * 2**20 * r["tokens_per_s"] / 1e9
    return {**out, "runs": runs}


# ---- llama.cpp ----------------------------------------------------------------------------
def llama_cpp(tool: Path, gguf: Path, amx: bool, threads: int) -> dict:
    env = {**os.environ, "LLAMA_EXTRA_BUFTS": "1" if amx else "0",
           "LLAMA_PROMPT_ONE_BY_ONE": "1" if amx else "0"}
    out = subprocess.run([str(tool), str(gguf), str(NEW_TOKENS), str(threads), str(REPEATS),
                          PROMPT],
                         env=env, capture_output=True, text=True, check=True).stdout
    median = re.search(r"median ([\d.]+) ms/token", out)
    best = re.search(r"best ([\d.]+) ms/token", out)
    ids = re.search(r"first new ids:(.*)", out)
    ms = float(median.group(1))
    size = gguf.stat().st_size / 2**20
    return {"engine": f"llama.cpp, AMX repacking {'on' if amx else 'off'}",
            "ms_per_token": ms, "tokens_per_s": 1e3 / ms, "best_ms_per_token": float(best.group(1)),
            "gb_per_s": size * 2**20 * 1e3 / ms / 1e9, "memory_mib": size,
            "tokens": [int(t) for t in ids.group(1).split()][:16]}


# ---- the whole run ------------------------------------------------------------------------
def autoq_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "autoq.cli", *args, "--json"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def prepare(plans: dict[str, Path], work: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (saved folder, GGUF file), made once (`autoq apply`, `autoq export`)."""
    out = {}
    for name, plan in plans.items():
        folder, gguf = work / f"{name}-model", work / f"{name}.gguf"
        if not (folder / "autoq.json").exists():
            autoq_cli("apply", str(plan), "--out", str(folder), "--force", "--cache-dir",
                      str(work / "layer-cache"))
        if not gguf.exists():
            autoq_cli("export", str(folder), "--out", str(gguf))
        out[name] = (folder, gguf)
    return out


def specs(prepared: dict[str, tuple[Path, Path]]) -> list[dict]:
    rows = [{"name": "fp32", "plan": None, "dtype": "float32", "modes": ["eager", "compiled"]},
            {"name": "bf16", "plan": None, "dtype": "bfloat16", "modes": ["eager"]}]
    for name, (folder, _) in prepared.items():
        base = {"plan": name, "folder": str(folder)}
        rows += [{**base, "name": f"{name} torch-int4 bf16", "backend": "torch-int4",
                  "dtype": "auto", "modes": ["eager", "compiled"]},
                 {**base, "name": f"{name} torch-int4 fp32", "backend": "torch-int4",
                  "dtype": "fp32", "modes": ["eager"]},
                 {**base, "name": f"{name} hqq fp32", "backend": "hqq", "dtype": "fp32",
                  "modes": ["eager"]}]
    return rows


def best(row: dict) -> dict:
    return min(row["runs"], key=lambda r: r["ms_per_token"])


def goals(rows: list[dict], plan: str) -> dict:
    """The issue's three goals on `plan` (uniform whole-model 4:64)."""
    by = {r["name"]: r for r in rows}
    fp32, int4 = by["fp32"], by[f"{plan} torch-int4 bf16"]
    llama = by.get(f"{plan} llama.cpp")
    same = {r["engine"]: r for r in fp32["runs"]}
    out = {"speedup_vs_fp32_same_engine": {
               r["engine"]: r["tokens_per_s"] / same[r["engine"]]["tokens_per_s"]
               for r in int4["runs"] if r["engine"] in same},
           "speedup_vs_fp32_best_engines": best(int4)["tokens_per_s"] / best(fp32)["tokens_per_s"],
           "memory_vs_fp32": int4["memory_mib"] / fp32["memory_mib"]}
    if llama:
        out["share_of_llama_cpp"] = {r["engine"]: best(int4)["tokens_per_s"] / r["tokens_per_s"]
                                     for r in llama["runs"]}
    out["met"] = {"speed >= 1.0x fp32": out["speedup_vs_fp32_best_engines"] >= 1.0,
                  "memory <= 1/3 fp32": out["memory_vs_fp32"] <= 1 / 3}
    if llama:
        out["met"][">= 50% of llama.cpp (its fastest)"] = min(out["share_of_llama_cpp"].values()) >= 0.5
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", action="append", default=[], metavar="NAME=PLAN.json")
    ap.add_argument("--llama-cpp", type=Path, help="the folder scripts/build_llama_cpp.sh built")
    ap.add_argument("--out", type=Path, default=ROOT / "results/benchmarks/cpu-serving")
    ap.add_argument("--work", type=Path, default=ROOT / "results/benchmarks/cpu-serving/work")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads of every engine (default: all cores)")
    ap.add_argument("--row", help=argparse.SUPPRESS)   # internal: one autoq row, as JSON
    a = ap.parse_args()
    if a.row:
        print(json.dumps(row(json.loads(a.row))))
        return
    began = time.time()
    plans = dict(p.split("=", 1) for p in a.plan)
    prepared = prepare({n: Path(p) for n, p in plans.items()}, a.work)
    rows = []
    a.out.mkdir(parents=True, exist_ok=True)
    for spec in specs(prepared):
        spec["threads"] = a.threads
        done = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], check=True,
                              capture_output=True, text=True, cwd=ROOT)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: rows[-1][k] for k in ("name", "memory_mib")}),
              [round(r["ms_per_token"], 2) for r in rows[-1]["runs"]], flush=True)
    if a.llama_cpp:
        for name, (_, gguf) in prepared.items():
            runs = [llama_cpp(a.llama_cpp / "llama_cpp_time", gguf, amx, a.threads)
                    for amx in (False, True)]
            rows.append({"name": f"{name} llama.cpp", "plan": name, "gguf": gguf.name,
                         "memory_mib": runs[0]["memory_mib"], "runs": runs})
            print(rows[-1]["name"], [round(r["ms_per_token"], 2) for r in runs], flush=True)
    import torch
    summary = {"format": "autoq.bench.cpu-serving/1", "command": " ".join(sys.argv),
               "protocol": f"batch 1, greedy, prompt {PROMPT!r}, {NEW_TOKENS} new tokens, "
                           f"median of {REPEATS} runs after a warm-up, {a.threads} threads",
               "machine": {"cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "load_before": os.getloadavg()},
               "versions": {"torch": torch.__version__, "python": platform.python_version()},
               "plans": plans, "goals": goals(rows, next(iter(plans))) if plans else {},
               "rows": rows, "wall_s": time.time() - began,
               "load_after": os.getloadavg()}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
