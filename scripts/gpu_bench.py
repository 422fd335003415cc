#!/usr/bin/env python
"""GPU benchmark: one command on a CUDA machine writes results/gpu/summary.json.

    .venv/bin/python scripts/gpu_bench.py                 # on the GPU box
    .venv/bin/python scripts/gpu_bench.py --tiny --out /tmp/bench   # anywhere, seconds

It builds the Llama-3.2-1B-Instruct architecture (its public config below; random
weights are valid for speed and size) and DeiT-S, and measures, with every
available serving backend (gemlite needs CUDA and the gemlite package; hqq always):

- lm: batch-1 greedy decode tokens/s (static KV cache + CUDA graphs on GPU, see
  autoq/speed.py; --engine compiled adds torch.compile) for the unquantized model,
  uniform 8/4/2-bit (and 3-bit, which gemlite cannot serve: the per-layer fallback)
  and mixed plans (one with lm_head quantized); next to each, the latency model's
  prediction (autoq/latency.py) and its relative error.
- vit: images/s at batch 1 and 256 (8 with --tiny).
- search: `autoq search` of 100 trials on the same architecture and the WikiText-2
  file, timed (skipped with --tiny).

Each part writes its own file in --out (lm.json, vit.json, search.json); a re-run
skips finished parts and resumes the search (a machine that limits one command to
10 minutes: `--search-timeout 500` and run it again until search.json says
100 trials), then writes summary.json, plans.json and plans.md (the per-plan table).
--tiny uses tiny configs so the whole script runs on a CPU in seconds
(tests/test_latency.py runs it that way).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoq.kinds import KINDS  # noqa: E402
from autoq import speed  # noqa: E402
from autoq.backends import BACKENDS, gemlite_installed, prepare_  # noqa: E402
from autoq.io import write_atomic, write_json  # noqa: E402
from autoq.latency import LatencyModel, device_name, package_version  # noqa: E402
from autoq.models import LoadedModel  # noqa: E402
from autoq.plan import LayerConfig  # noqa: E402
from autoq.quantize import LayerCache, quantize_  # noqa: E402
from autoq.size import measure  # noqa: E402

# meta-llama/Llama-3.2-1B-Instruct, config.json (public values)
LLAMA_3_2_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
    rope_theta=500000.0, rope_scaling={"factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192,
                                       "rope_type": "llama3"},
    tie_word_embeddings=True, rms_norm_eps=1e-5, head_dim=64, hidden_act="silu",
    attention_bias=False, mlp_bias=False, bos_token_id=128000,
    eos_token_id=[128001, 128008, 128009])
LLAMA_TINY = dict(LLAMA_3_2_1B, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512, head_dim=32,
                  bos_token_id=1, eos_token_id=2)
DEIT = "deit_small_patch16_224"
DEIT_TINY = dict(depth=2, embed_dim=64, num_heads=2, img_size=32, patch_size=8)
WIKITEXT = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"
BPW_LIMIT = 4.5
PARTS = ("lm", "vit", "search")
GOALS = {"tokens_per_s": 1500, "speedup": 2.5, "latency_error": 0.10, "search_minutes": 30}


BLOCK = re.compile(r"\.(?:layers|blocks)\.(\d+)\.")


def C(text: str) -> LayerConfig:
    return LayerConfig.parse(text)


def block_of(name: str) -> int | None:
    m = BLOCK.search(name)
    return int(m.group(1)) if m else None


# ---- plans: name -> (shapes, heads, blocks) -> resolved -------------------------------
def _uniform(cfg):
    return lambda shapes, heads, n: {k: (None if k in heads else C(cfg)) for k in shapes}


def _outer8(shapes, heads, n):
    """First and last quarter of the blocks at 8:64, the rest at 4:64, head kept."""
    def pick(k):
        b = block_of(k)
        return None if k in heads else C("8:64") if b is not None and (
            b < n / 4 or b >= n - n / 4) else C("4:64")
    return {k: pick(k) for k in shapes}


def _head4(shapes, heads, n):
    """Everything at 4:128 and lm_head quantized too (4:64)."""
    return {k: C("4:64") if k in heads else C("4:128") for k in shapes}


def _mlp2(shapes, heads, n):
    """Attention 4:64, gate/up 2:32, down 4:64, lm_head 8:64."""
    def pick(k):
        if k in heads:
            return C("8:64")
        return C("2:32") if k.endswith(("gate_proj", "up_proj", "fc1")) else C("4:64")
    return {k: pick(k) for k in shapes}


def _fp(shapes, heads, n):
    return {k: None for k in shapes}


LM_PLANS = {"fp": _fp,
            "u8 (8:64)": _uniform("8:64"), "u4 (4:64)": _uniform("4:64"),
            "u4 (4:128)": _uniform("4:128"), "u3 (3:64)": _uniform("3:64"),
            "u2 (2:32)": _uniform("2:32"), "mixed outer8/4": _outer8,
            "mixed 4:128 + head 4:64": _head4, "mixed mlp2 + head 8:64": _mlp2}
VIT_PLANS = {"fp": _fp, "u8 (8:64)": _uniform("8:64"), "u4 (4:64)": _uniform("4:64"),
             "u2 (2:32)": _uniform("2:32"), "mixed outer8/4": _outer8}


# ---- models ---------------------------------------------------------------------------
def build_llama(tiny: bool, device, dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**(LLAMA_TINY if tiny else LLAMA_3_2_1B))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    name = "llama-3.2-1b-arch" + ("-tiny" if tiny else "")
    return LoadedModel(name, KINDS["lm"], model, device, dtype, {"lm_head"},
                       arch={"family": "hf", "config": config.to_dict()})


def build_deit(tiny: bool, device, dtype) -> LoadedModel:
    import timm

    torch.manual_seed(0)
    kwargs = dict(DEIT_TINY) if tiny else {}
    model = timm.create_model(DEIT, pretrained=False, num_classes=100, **kwargs)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel("deit-s" + ("-tiny" if tiny else ""), KINDS["vit"], model, device, dtype,
                       {"head"}, arch={"family": "timm", "name": DEIT, "kwargs": kwargs})


# ---- measuring ------------------------------------------------------------------------
def run_plans(loaded: LoadedModel, plans: dict, backends: list[str], cache_dir: Path,
              vit_batches: tuple[int, ...], speed_kwargs: dict, say) -> list[dict]:
    """Every plan x backend: measured speed, the latency model's prediction, size."""
    shapes = loaded.shapes()
    blocks = 1 + max((block_of(k) for k in shapes if block_of(k) is not None), default=0)
    resolved_plans = {name: make(shapes, loaded.heads, blocks) for name, make in plans.items()}
    options = sorted({c for r in resolved_plans.values() for c in r.values() if c is not None})
    latency = {}
    for b in backends:
        say(f"{loaded.spec}: latency model for backend {b} ({len(options)} options)")
        latency[b] = LatencyModel.for_model(loaded, options, b, cache_dir,
                                            speed_kwargs=speed_kwargs)
    rows = []
    for name, resolved in resolved_plans.items():
        cache = LayerCache()  # per plan: GPU memory holds one plan's layers at a time
        for b in backends:
            quantize_(loaded.model, resolved, device=loaded.device, dtype=loaded.dtype,
                      cache=cache)  # back to HQQLinear (a previous backend converted them)
            size = measure(loaded.model)
            served = prepare_(loaded.model, b)
            row = {"model": loaded.spec, "plan": name, "backend": b,
                   "bits_per_weight": size.bits_per_weight if any(resolved.values()) else
                   float(torch.finfo(loaded.dtype).bits), "size_mib": size.size_mib,
                   "gemlite_layers": served["gemlite_layers"],
                   "fallback_layers": len(served["fallback"]),
                   "fallback_reasons": sorted(set(served["fallback"].values()))}
            t = time.perf_counter()
            if loaded.kind.name == "lm":
                s = speed.lm_decode(loaded, **speed_kwargs)
                row.update(tokens_per_s=s["tokens_per_s"], speed_engine=s["speed_engine"],
                           achieved_gb_per_s=size.size_bytes * s["tokens_per_s"] / 1e9,
                           speed_protocol=s["speed_protocol"])
                if "speed_engine_fallback" in s:
                    row["speed_engine_fallback"] = s["speed_engine_fallback"]
                measured = s["tokens_per_s"]
            else:
                for batch in vit_batches:
                    row[f"images_per_s_b{batch}"] = speed.vit_images(loaded, batch)["images_per_s"]
                measured = row[f"images_per_s_b{vit_batches[0]}"]
            predicted = latency[b].tokens_per_s(resolved)
            row.update(predicted_per_s=predicted,
                       predicted_error=abs(predicted - measured) / measured,
                       measure_seconds=time.perf_counter() - t)
            say(f"  {name:26s} {b:8s} {row['bits_per_weight']:5.2f} b/w  "
                f"{measured:10.1f}/s  predicted {predicted:10.1f}/s")
            rows.append(row)
        del cache
        if loaded.device.type == "cuda":
            torch.cuda.empty_cache()
    quantize_(loaded.model, {k: None for k in shapes}, device=loaded.device, dtype=loaded.dtype)
    return rows


SEARCH_STUDY = "gpu-bench"


def finished_trials(storage: str) -> int:
    import optuna

    try:
        study = optuna.load_study(study_name=SEARCH_STUDY, storage=storage)
    except KeyError:  # no such study yet
        return 0
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in done for t in study.get_trials(deepcopy=False))


def time_search(out: Path, trials: int, data: Path, timeout: float | None, tiny: bool,
                engine_device, dtype, say) -> dict:
    """Run (or resume) `autoq search` for `trials` trials on the Llama architecture and
    add its wall time to search.json; minutes is set once all trials are finished."""
    from autoq.cli import app

    state_path = out / "search.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else \
        {"seconds": 0.0, "runs": 0, "finished": 0, "trials": trials}
    if "search" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        return {**state, "minutes": None, "note": "this autoq has no `search` command yet"}
    if not data.exists():
        return {**state, "minutes": None, "note": f"WikiText-2 file {data} is missing (--data)"}
    folder = out / "llama-3.2-1b-arch"
    if not (folder / "config.json").exists():
        try:
            from transformers import AutoTokenizer

            from autoq.models.hf import smollm2_gguf

            gguf = smollm2_gguf()  # offline tokenizer; its ids (< 49152) fit the vocabulary
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as e:  # noqa: BLE001
            return {**state, "minutes": None,
                    "note": f"no offline tokenizer for the search ({e.__class__.__name__})"}
        llama = build_llama(tiny, engine_device, dtype)
        llama.model.save_pretrained(folder)
        tok.save_pretrained(folder)
        del llama
    storage = f"sqlite:///{(out / 'search' / 'study.db').resolve()}"
    (out / "search").mkdir(parents=True, exist_ok=True)
    if state["finished"] < trials:
        cmd = [sys.executable, "-m", "autoq.cli", "search", "--model", f"hf:{folder}",
               "--data", str(data), "--trials", str(trials), "--target-ppl", "1e12",
               "--speed", "predicted", "--out", str(out / "search"), "--study", SEARCH_STUDY,
               "--storage", storage, "--quiet"] + (["--timeout", str(timeout)] if timeout else [])
        say("timing: " + " ".join(cmd))
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        state["seconds"] += time.perf_counter() - t
        state["runs"] += 1
        state["finished"] = finished_trials(storage)
        write_json(state_path, state)
        if done.returncode != 0:
            return {**state, "minutes": None, "note": f"autoq search failed (exit "
                    f"{done.returncode}): {done.stderr.strip()[-400:]}"}
    finished = state["finished"] >= trials
    note = (f"{state['finished']} of {trials} trials in {state['runs']} run(s) (each run "
            "reloads the model), random-weight Llama-3.2-1B architecture, SmolLM2 tokenizer, "
            f"{data.name}, --speed predicted, target ppl 1e12 (every trial feasible)")
    if not finished:
        note += "; re-run the bench to continue"
    return {**state, "minutes": state["seconds"] / 60 if finished else None, "note": note}


# ---- report ---------------------------------------------------------------------------
def markdown(rows: list[dict]) -> str:
    head = ("| model | plan | backend | bits/weight | size MiB | speed (/s) | predicted (/s) | "
            "error | GB/s | gemlite layers | fallback layers | engine |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in rows:
        sp = f"{r['tokens_per_s']:.1f} tok" if "tokens_per_s" in r else " / ".join(
            f"{v:.1f} img@b{k.removeprefix('images_per_s_b')}" for k, v in r.items()
            if k.startswith("images_per_s_b"))
        gbs = f"{r['achieved_gb_per_s']:.1f}" if "achieved_gb_per_s" in r else ""
        lines.append(f"| {r['model']} | {r['plan']} | {r['backend']} | {r['bits_per_weight']:.2f} "
                     f"| {r['size_mib']:.1f} | {sp} | {r['predicted_per_s']:.1f} | "
                     f"{100 * r['predicted_error']:.1f}% | {gbs} | {r['gemlite_layers']} | "
                     f"{r['fallback_layers']} | {r.get('speed_engine', 'eager')} |")
    return head + "\n".join(lines) + "\n"


def summarize(rows: list[dict], device: str, dtype: torch.dtype, tiny: bool,
              search: dict) -> dict:
    lm = [r for r in rows if "tokens_per_s" in r]
    out = {"device": device, "tiny": tiny, "unquantized_dtype": str(dtype).removeprefix("torch."),
           "search_100_trials_minutes": search.get("minutes"), "search_note": search.get("note")}
    if not lm:
        return out
    fp = max((r for r in lm if r["plan"] == "fp"), key=lambda r: r["tokens_per_s"])
    small = [r for r in lm if r["plan"] != "fp" and r["bits_per_weight"] <= BPW_LIMIT]
    best = max(small, key=lambda r: r["tokens_per_s"])
    worst = max(lm, key=lambda r: r["predicted_error"])
    out.update({"fp16_tokens_per_s": fp["tokens_per_s"],
                "quantized_tokens_per_s": best["tokens_per_s"],
                "quantized_bits_per_weight": best["bits_per_weight"],
                "quantized_plan": best["plan"], "quantized_backend": best["backend"],
                "speedup_vs_fp16": best["tokens_per_s"] / fp["tokens_per_s"],
                "achieved_gb_per_s": best["achieved_gb_per_s"],
                "predicted_vs_measured_error": worst["predicted_error"],
                "predicted_vs_measured_worst": f"{worst['plan']} / {worst['backend']}",
                "predicted_vs_measured_plans": len(lm), "protocol": fp["speed_protocol"]})
    if not tiny:
        minutes = search.get("minutes")
        out["goals"] = {
            "tokens_per_s >= 1500": best["tokens_per_s"] >= GOALS["tokens_per_s"],
            "speedup >= 2.5": out["speedup_vs_fp16"] >= GOALS["speedup"],
            "latency model within 10%": worst["predicted_error"] <= GOALS["latency_error"],
            "100 trials <= 30 min": minutes is not None and minutes <= GOALS["search_minutes"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT / "results/gpu")
    ap.add_argument("--part", choices=("all", *PARTS), default="all",
                    help="what to run; a part whose results are in --out is skipped "
                         "(the search resumes) unless --fresh")
    ap.add_argument("--fresh", action="store_true", help="measure again what --out holds")
    ap.add_argument("--engine", choices=sorted(speed.ENGINES), default=None,
                    help="LM decode engine (default: graphs on CUDA, generate on CPU)")
    ap.add_argument("--data", type=Path, default=WIKITEXT, help="wiki.test.raw for the search")
    ap.add_argument("--search-trials", type=int, default=100, help="0 skips the search timing")
    ap.add_argument("--search-timeout", type=float, default=None,
                    help="stop starting search trials after SEC seconds (re-run to continue)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    backends = ["hqq"] + (["gemlite"] if cuda and gemlite_installed() else [])
    skipped = {b: "needs CUDA and the gemlite package" for b in BACKENDS if b not in backends}
    say(f"device {device_name(device)}, {dtype}, backends {backends}"
        + (f" (skipped: {skipped})" if skipped else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.out / "cache"
    parts = PARTS if args.part == "all" else (args.part,)
    lm_speed = {"new_tokens": 8, "repeats": 2} if args.tiny else {}
    if args.engine:
        lm_speed["engine"] = args.engine

    for part in ("lm", "vit"):
        path = args.out / f"{part}.json"
        if part not in parts or (path.exists() and not args.fresh):
            continue
        build, plans = (build_llama, LM_PLANS) if part == "lm" else (build_deit, VIT_PLANS)
        loaded = build(args.tiny, device, dtype)
        batches = () if part == "lm" else (1, 8) if args.tiny else (1, 256)
        rows = run_plans(loaded, plans, backends, cache_dir, batches,
                         lm_speed if part == "lm" else {}, say)
        write_json(path, rows)
        del loaded
        if cuda:
            torch.cuda.empty_cache()
    search = {"minutes": None, "note": "skipped with --tiny"} if args.tiny else \
        {"minutes": None, "note": "skipped (--search-trials 0)"} if args.search_trials <= 0 \
        else {"minutes": None, "note": "not run yet (--part search)"}
    if "search" in parts and not args.tiny and args.search_trials > 0:
        if args.fresh:
            (args.out / "search.json").unlink(missing_ok=True)
        search = time_search(args.out, args.search_trials, args.data, args.search_timeout,
                             args.tiny, device, dtype, say)
    elif (args.out / "search.json").exists():
        state = json.loads((args.out / "search.json").read_text())
        done = state["finished"] >= state["trials"]
        search = {"minutes": state["seconds"] / 60 if done else None,
                  "note": f"{state['finished']} of {state['trials']} trials so far"}

    rows = [r for part in ("lm", "vit") if (args.out / f"{part}.json").exists()
            for r in json.loads((args.out / f"{part}.json").read_text())]
    summary = summarize(rows, device_name(device), dtype, args.tiny, search)
    summary.update(backends=backends, skipped_backends=skipped,
                   versions={p: package_version(p) for p in ("torch", "transformers", "hqq", "gemlite")})
    write_json(args.out / "plans.json", rows)
    write_atomic(args.out / "plans.md", markdown(rows))
    write_json(args.out / "summary.json", summary)
    say(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
