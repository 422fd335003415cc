#!/usr/bin/env python
"""The GPU check: one run on an H100/H200 that measures what the goals need, in a time
budget it enforces itself, and writes summary.json, plans.md and a log.

    bash scripts/gpu_check.sh                       # on the GPU machine (installs .gpu/ first)
    python scripts/gpu_check.py --out DIR [--budget SEC] [--carry .gpu]
    python scripts/gpu_check.py --tiny --out DIR    # the same on tiny configs, CPU, seconds

Parts, each in its own (forked) process with a share of the budget:

- lm: the Llama-3.2-1B-Instruct architecture (public config values below, random
  weights: valid for speed and size), batch-1 decode tokens/s and GB/s for fp16, a mixed
  plan at <= 4.5 bits/weight with lm_head quantized (and the tied embedding, when this
  autoq's plans can name it), uniform 4:64 and 8:64, and 3:64 (gemlite cannot serve
  3-bit: the fallback path); for each, the latency model's prediction and its error, and
  the served model's logits against HQQ's reference forward (`served_max_abs_diff`).
  Then the same plans on HQQ's torch backend, and with --compiled torch.compile.
- vit: DeiT-S images/s at batch 1 and 256 (fp16; --vit-quantized adds 8:64 and 4:64).
- search: `autoq.search.run.search` on the same architecture, scored on the carried
  WikiText-2 file tokenized with SmolLM2's tokenizer (its ids fit Llama's vocabulary),
  short windows; at least --min-trials trials, then more while the share lasts. Reports
  the sensitivity pass, seconds per trial and the extrapolated wall time of 100 trials.

Budget: each part gets a share of --budget (lm 45%, vit 7%, search 48%, of the parts
asked for; what a part leaves unused passes to the next). At its share's end a part is
interrupted (SIGINT: it stops, keeps what it measured and says "over budget"); one that
does not stop within --grace seconds is killed ("killed"). The summary is always written.

Tolerance (gemlite against HQQ): both compute the same dequantized weights in fp16 and
differ only by rounding (accumulation order, where the dequantization is rounded). The
fp16 rounding floor is measured in the same run: the largest |fp16 - fp32| of the
unquantized model's logits on the probe input (8 tokens decoded one at a time). gemlite
matches HQQ when its largest |served - HQQ| on that probe is at most TOLERANCE_FLOORS (4)
floors; a packing or scale error is orders of magnitude larger.

The check's files (scripts/ is not a package: each puts its folder on sys.path):
gpu_check.py (this: the command line, the parts in child processes, summary.json),
gpu_check_parts.py (lm, vit), gpu_check_search.py (search), gpu_check_figures.py (the
figures, the goals, plans.md) and gpu_check_common.py (constants, log, plans, models).
Every plan goes through the library's pipeline (autoq.pipeline: quantize, serve).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # scripts/: the check's files
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check_common as common  # noqa: E402  (puts the checkout first on sys.path)
from gpu_check_common import (FORMAT, OUT_FILES, PARTS, ROOT, SHARES,  # noqa: E402
                              SUMMARY_RESERVE_S, PartState, error_text, log)
from gpu_check_figures import (goal_lines, lm_figures, markdown,  # noqa: E402
                               search_figures, vit_figures)
from gpu_check_parts import part_lm, part_vit  # noqa: E402
from gpu_check_search import part_search  # noqa: E402

from autoq.io import write_atomic, write_json  # noqa: E402

PART_FUNCS = {"lm": part_lm, "vit": part_vit, "search": part_search}


# ---- running the parts -----------------------------------------------------------------
def child(part: str, ctx: argparse.Namespace, share: float, deadline: float) -> None:
    """A part in a forked process: interrupted (SIGINT) at its deadline."""
    code = 0
    state = PartState(part, ctx.work / f"{part}.json", share, deadline)
    hang = ctx.simulate_hang == part
    # the interrupt must raise here even when this process was started with SIGINT
    # ignored (a background job of a non-interactive shell: nohup ... &, a job runner)
    signal.signal(signal.SIGINT, signal.SIG_IGN if hang else signal.default_int_handler)
    # (hang, for the tests: a part that ignores the interrupt, as one stuck in a kernel would)
    timer = threading.Timer(max(0.0, deadline - time.time()),
                            lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.daemon = True
    finished = False
    try:
        timer.start()
        if hang:
            time.sleep(3600)
        if ctx.simulate_slow == part:  # tests: a part still running at its deadline
            time.sleep(30)
        PART_FUNCS[part](state, ctx)
        finished = True
        timer.cancel()
        state.set(status="done", current=None)
    except KeyboardInterrupt:
        timer.cancel()
        if finished:
            state.set(status="done", current=None)
        else:
            state.set(status="over budget", stopped_during=state.data.get("current"))
            log(f"{part}: over budget (share {share:.0f} s), stopped during "
                f"{state.data.get('current')!r}")
    except BaseException as e:  # noqa: BLE001
        timer.cancel()
        state.set(status="failed", error=error_text(e),
                  traceback="".join(traceback.format_exc(limit=15))[-4000:])
        log(f"{part}: failed: {error_text(e)}\n{traceback.format_exc(limit=15)}")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def preload() -> None:
    """Import what every part needs once, before forking (none of it touches CUDA;
    gemlite, which does, is imported in the parts)."""
    import optuna  # noqa: F401
    import timm  # noqa: F401
    import transformers  # noqa: F401
    from hqq.core import quantize  # noqa: F401
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: F401

    from autoq import pipeline  # noqa: F401
    from autoq.quant import size  # noqa: F401
    from autoq.search import run  # noqa: F401
    from autoq.serve import backend, latency, speed  # noqa: F401


def run_parts(ctx: argparse.Namespace, budget: float, began: float) -> dict:
    """Every part in turn, each in a forked process, within `budget` seconds from `began`."""
    mp = multiprocessing.get_context("fork")
    end = began + budget - SUMMARY_RESERVE_S - ctx.grace  # a killed part ends by `end` + grace
    left = end - time.time()
    total = sum(SHARES[p] for p in ctx.parts)  # the parts asked for share the whole budget
    shares = {p: SHARES[p] / total * left for p in PARTS}
    shares.update(ctx.share)
    states, unused = {}, 0.0
    for part in PARTS:
        if part not in ctx.parts:
            states[part] = {"part": part, "status": "skipped", "why": "not in --parts"}
            continue
        start = time.time()
        # what earlier parts left unused passes on, except to a part given --share
        fixed = part in ctx.share
        share = min(shares[part] + (0.0 if fixed else unused), max(0.0, end - start))
        deadline = start + share
        log(f"part {part}: share {share:.1f} s")
        path = ctx.work / f"{part}.json"
        path.unlink(missing_ok=True)
        proc = mp.Process(target=child, args=(part, ctx, share, deadline), name=f"gpu-check-{part}")
        proc.start()
        proc.join(max(0.0, deadline + ctx.grace - time.time()))
        killed = proc.is_alive()
        if killed:
            proc.kill()
            proc.join()
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {"part": part, "status": "running", "share_s": share}
        if killed:
            state.update(status="killed", stopped_during=state.get("current"),
                         why=f"did not stop within {ctx.grace:g} s of its share's end; killed")
        elif state.get("status") == "running":
            state.update(status="crashed", why=f"the process ended (exit code {proc.exitcode}) "
                                               "without writing its result")
        state["seconds"] = time.time() - start
        state["share_s"] = share
        states[part] = state
        log(f"part {part}: {state['status']} after {state['seconds']:.1f} s")
        unused = (unused if fixed else 0.0) + max(0.0, deadline - time.time())
    return states


# ---- summary --------------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def summarize(states: dict, ctx: argparse.Namespace, budget: float, wall: float) -> dict:
    env = next((s["env"] for s in states.values() if "env" in s), {})
    lm_fig, lm_goals = lm_figures(states)
    search_fig, search_goals = search_figures(states)
    parts = {p: {k: s.get(k) for k in ("status", "share_s", "seconds", "done", "failed",
                                       "skipped", "stopped_during", "error", "why") if k in s}
             for p, s in states.items()}
    return {"format": FORMAT, "tiny": ctx.tiny, "device": env.get("device"), "environment": env,
            "autoq_commit": git_commit(),
            "budget": {"total_s": budget, "wall_s": wall, "grace_s": ctx.grace, "parts": parts},
            "figures": {**lm_fig, **vit_figures(states), **search_fig},
            "goals": {**lm_goals, **search_goals},
            "lm": {k: states.get("lm", {}).get(k) for k in ("info", "floor", "copy_gb_per_s",
                                                           "rows")},
            "vit": {k: states.get("vit", {}).get(k) for k in ("info", "rows")},
            "search": {**{k: states.get("search", {}).get(k) for k in ("info", "autotune_probe")},
                       **{k: v for k, v in states.get("search", {}).get("search", {}).items()
                          if k != "messages"}}}


def parse_shares(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        part, _, sec = item.partition("=")
        if part not in PARTS or not sec:
            raise SystemExit(f"--share {item!r}: write PART=SECONDS with PART one of {PARTS}")
        out[part] = float(sec)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for summary.json, plans.md, "
                    "gpu_check.log, search_trials.jsonl")
    ap.add_argument("--carry", type=Path, default=ROOT / ".gpu",
                    help="the folder prepare_gpu_carry.sh filled")
    ap.add_argument("--data", type=Path, default=None, help="wiki.test.raw (default: in --carry)")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="tokenizer folder (default: in --carry, else SmolLM2's GGUF)")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch folder: caches, the study (default: a new temporary folder)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for everything (default 450; 240 with --tiny)")
    ap.add_argument("--share", action="append", default=[], metavar="PART=SECONDS",
                    help="override a part's share of the budget")
    ap.add_argument("--grace", type=float, default=None,
                    help="seconds a part gets to stop after its share (default 15; 5 --tiny)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of "
                    + ",".join(PARTS))
    ap.add_argument("--tiny", action="store_true", help="tiny configs: a CPU smoke test")
    ap.add_argument("--min-trials", type=int, default=10)
    ap.add_argument("--max-trials", type=int, default=None, help="default 100 (12 with --tiny)")
    ap.add_argument("--compiled", action="store_true",
                    help="also decode fp16 and the mixed plan with torch.compile (~1 min each)")
    ap.add_argument("--vit-quantized", action="store_true", default=None,
                    help="also DeiT-S at 8:64 and 4:64 (default: only with --tiny; gemlite "
                         "tunes its GEMM kernels per shape first)")
    ap.add_argument("--search-autotune", default="default", choices=("default", "fast", "max"),
                    help="gemlite autotuning during the search (default: 'default', one "
                         "config per kernel; its cost is probed and added to the estimate)")
    ap.add_argument("--simulate-hang", default=None, choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--simulate-slow", default=None, choices=PARTS, help=argparse.SUPPRESS)
    ctx = ap.parse_args(argv)
    ctx.parts = [p for p in ctx.parts.split(",") if p]
    if any(p not in PARTS for p in ctx.parts):
        raise SystemExit(f"--parts: use names from {PARTS}")
    ctx.share = parse_shares(ctx.share)
    budget = ctx.budget or (240.0 if ctx.tiny else 450.0)
    ctx.grace = ctx.grace if ctx.grace is not None else (5.0 if ctx.tiny else 15.0)
    ctx.max_trials = ctx.max_trials or (12 if ctx.tiny else 100)
    ctx.vit_quantized = ctx.tiny if ctx.vit_quantized is None else ctx.vit_quantized
    ctx.data = ctx.data or ctx.carry / "wiki.test.raw"
    ctx.tokenizer = ctx.tokenizer or (ctx.carry / "tokenizer")
    ctx.out.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:
        (ctx.out / name).unlink(missing_ok=True)
    common.LOG_PATH = ctx.out / "gpu_check.log"
    own_work = ctx.work is None
    ctx.work = ctx.work or Path(tempfile.mkdtemp(prefix="autoq-gpu-check-"))
    ctx.work.mkdir(parents=True, exist_ok=True)
    log(f"gpu check: budget {budget:.0f} s, parts {ctx.parts}, tiny {ctx.tiny}, out {ctx.out}, "
        f"work {ctx.work}")
    t = time.time()
    try:
        preload()
        states = run_parts(ctx, budget, t)
        summary = summarize(states, ctx, budget, time.time() - t)
        write_json(ctx.out / "summary.json", summary)
        write_atomic(ctx.out / "plans.md", markdown(summary))
        log("goals:\n" + "\n".join(goal_lines(summary)))
        log(f"wrote {ctx.out / 'summary.json'} and plans.md in {time.time() - t:.1f} s")
    finally:
        if own_work:
            shutil.rmtree(ctx.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
