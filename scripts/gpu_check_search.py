"""The GPU check's search part (scripts/gpu_check.py runs it in a forked process):
`autoq.search.run.search` on Llama-3.2-1B's architecture (random weights, registered as
a model in this process), scored on the carried WikiText-2 file, with gemlite's
autotuning cost probed first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # scripts/: the check's files
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_check_common import (LM_NAME, LM_NAME_TINY, TINY_SPACE, PartState,  # noqa: E402
                              build_llama, environment, error_text, llama_config,
                              load_tokenizer, log)


def autotune_probe(state: PartState, seq_len: int) -> None:
    """gemlite's autotuning cost for one kernel shape (2048 -> 8192, 4:32): first call
    minus a later one, at batch 1 (GEMV, decode) and at seq_len tokens (GEMM, scoring)."""
    from autoq.quant import LayerConfig
    from autoq.serve.latency import timing_layer

    device = torch.device("cuda")
    # 4:32: a shape and option the lm part did not compile (Triton keeps compiled kernels
    # on disk), so this is a cold first call
    layer = timing_layer(2048, 8192, LayerConfig(4, 32), "gemlite", device, torch.float16)
    out = {}
    for label, m in (("gemv_m1", 1), (f"gemm_m{seq_len}", seq_len)):
        x = torch.randn(1, m, 2048, device=device, dtype=torch.float16)
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t = time.perf_counter()
            layer(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[label] = {"first_s": times[0], "second_s": times[1], "autotune_s": times[0] - times[1]}
    state.set(autotune_probe=out)


def trial_times(storage: str, study: str) -> list[dict]:
    import optuna

    from autoq import study as contract

    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    out = []
    for t in trials:
        if t.datetime_start is None:
            continue
        m = contract.attr(t.user_attrs, contract.METRICS, {}) or {}
        out.append({"number": t.number, "state": t.state.name,
                    "start": t.datetime_start.timestamp(),
                    "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete else None,
                    "eval_seconds": m.get("eval_seconds"), "origin": contract.origin(t.user_attrs),
                    "fail_reason": contract.attr(t.user_attrs, contract.FAIL_REASON)})
    return out


def part_search(state: PartState, ctx: argparse.Namespace) -> None:
    from autoq.models import MODELS, pick_device, pick_dtype, register
    from autoq.pipeline.evaluator import EvalSettings
    from autoq.search.run import search
    from autoq.search.session import SearchSettings
    from autoq.serve import require_backend

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = pick_device("auto")
    state.set(env=environment(device), dtype=str(pick_dtype("auto", device)))
    backend = require_backend("auto", device)
    data = ctx.data
    if not data.is_file():
        raise FileNotFoundError(f"{data}: no WikiText-2 file (run scripts/prepare_gpu_carry.sh)")
    tok = load_tokenizer(ctx.tokenizer)
    config = llama_config(ctx.tiny, len(tok))
    name = LM_NAME_TINY if ctx.tiny else LM_NAME
    if name not in MODELS:
        @register(name, "lm", "Llama-3.2-1B-Instruct's architecture, random weights (GPU check)",
                  "nothing: built by scripts/gpu_check.py")
        def _load(_, device, dtype, checkpoint=None):
            return build_llama(config, device, dtype, name, tokenizer=tok)

    seq_len, limit = (32, 12) if ctx.tiny else (512, 40)
    out = ctx.work / "search"
    study = "gpu-check"
    storage = f"sqlite:///{(out / study).resolve()}/study.db"
    info = {"model": name, "vocab_size": config.vocab_size, "tokenizer_vocab": len(tok),
            "data": data.name, "seq_len": seq_len, "windows": limit, "backend": backend,
            "target": None, "scoring": "no quality target: every trial scores all windows "
            "(early stopping off), the most a trial costs", "measure_front": 2,
            "gemlite_autotune": ctx.search_autotune if backend == "gemlite" else None}
    state.set(info=info)
    if backend == "gemlite":
        try:
            autotune_probe(state, seq_len)
        except Exception as e:  # noqa: BLE001
            state.set(autotune_probe={"error": error_text(e)})
        import gemlite

        gemlite.set_autotune(ctx.search_autotune)

    space = None  # the model family's shipped space (lm-per-layer)
    if ctx.tiny:
        space = ctx.work / "tiny-space.yaml"
        space.write_text(TINY_SPACE)
        info["space"] = "lm-per-layer with baselines 8:64 and 4:64 only"

    def settings(trials: int, timeout: float | None = None) -> SearchSettings:
        ev = EvalSettings(model=name, task="wikitext2", data=str(data), seq_len=seq_len,
                          limit=limit, cache_dir=str(out / "layer-cache"), backend="auto")
        return SearchSettings(eval=ev, target=None, metric="ppl", trials=trials,
                              timeout=timeout, space=str(space) if space else None,
                              out=str(out), study=study, measure_front=2)

    messages: list[tuple[float, str]] = []

    def say(m: str) -> None:
        messages.append((time.time(), m))
        log(f"search: {m}")

    calls: list[dict] = []

    def call(trials: int, timeout: float | None) -> None:
        c = {"trials": trials, "timeout_s": timeout, "start": time.time(), "end": None,
             "interrupted": False}
        calls.append(c)
        state.set(calls=calls)
        try:
            result = search(settings(trials, timeout), say)
            c["finished"], c["front"] = result.finished, len(result.front)
        except KeyboardInterrupt:
            c["interrupted"] = True
            raise
        finally:
            c["end"] = time.time()
            state.set(calls=calls)

    try:
        call(ctx.min_trials, None)
        first = calls[0]
        done = [t for t in trial_times(storage, study) if t["seconds"] is not None]
        per = statistics.mean(t["seconds"] for t in done[1:]) if len(done) > 1 else 10.0
        last = max((t["start"] + t["seconds"] for t in done), default=first["end"])
        reopen = next((t for t, m in messages if m.startswith("baseline")), first["start"]) \
            - first["start"]
        # the loop's timeout counts from its start, after the study is opened again
        timeout = state.left() - reopen - (first["end"] - last) - 2 * per - 5
        if ctx.max_trials > ctx.min_trials and timeout > per:
            import gc

            gc.collect()  # the first call's model and layers
            if device.type == "cuda":
                torch.cuda.empty_cache()
            call(ctx.max_trials, timeout)
    finally:
        summary = {"calls": calls, "messages": [(t - calls[0]["start"], m) for t, m in messages]
                   if calls else []}
        try:
            summary["trials"] = trial_times(storage, study)
        except Exception as e:  # noqa: BLE001  (no study yet)
            summary["trials_error"] = error_text(e)
        sens = out / study / "sensitivity.json"
        if sens.exists():
            summary["sensitivity_seconds"] = json.loads(sens.read_text()).get("seconds")
        trials_file = out / study / "trials.jsonl"
        if trials_file.exists():
            shutil.copyfile(trials_file, ctx.out / "search_trials.jsonl")
        state.set(search=summary)
