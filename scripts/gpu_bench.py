#!/usr/bin/env python
"""GPU benchmark: one command on a CUDA machine writes results/gpu/summary.json.

    .venv/bin/python scripts/gpu_bench.py                 # on the GPU box (about 15-25 min)
    .venv/bin/python scripts/gpu_bench.py --tiny --out /tmp/bench   # anywhere, seconds

It builds the Llama-3.2-1B-Instruct architecture (its public config below; random
weights are valid for speed and size) and DeiT-S, and measures, with every
available serving backend (gemlite needs CUDA and the gemlite package; hqq always):

- LM: batch-1 greedy decode tokens/s (static KV cache + torch.compile/CUDA graphs on
  GPU, see autoq/speed.py) for the unquantized model, uniform 8/4/2-bit (and 3-bit,
  which gemlite cannot serve: it shows the per-layer fallback) and mixed plans (one
  with lm_head quantized); next to each, the latency model's prediction
  (autoq/latency.py) and its relative error.
- ViT: images/s at batch 1 and 256 (8 with --tiny).
- `autoq search` of 100 trials on the same architecture and the WikiText-2 file,
  timed (skipped with --tiny or when the file or a tokenizer is missing).

Outputs in --out: summary.json, plans.json, plans.md (the per-plan table), the
latency caches, and search/ (the study). --tiny uses tiny configs so the whole
script runs on a CPU in seconds (tests/test_latency.py runs it that way).
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

from autoq import speed  # noqa: E402
from autoq.backends import BACKENDS, gemlite_installed, prepare_  # noqa: E402
from autoq.io import write_atomic, write_json  # noqa: E402
from autoq.latency import LatencyModel, device_name  # noqa: E402
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
    return LoadedModel(name, "lm", model, device, dtype, {"lm_head"},
                       arch={"family": "hf", "config": config.to_dict()})


def build_deit(tiny: bool, device, dtype) -> LoadedModel:
    import timm

    torch.manual_seed(0)
    kwargs = dict(DEIT_TINY) if tiny else {}
    model = timm.create_model(DEIT, pretrained=False, num_classes=100, **kwargs)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel("deit-s" + ("-tiny" if tiny else ""), "vit", model, device, dtype,
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
            if loaded.kind == "lm":
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


def time_search(loaded: LoadedModel, out: Path, trials: int, data: Path, say) -> tuple:
    """(minutes, note) of `autoq search` for `trials` trials on this architecture."""
    from autoq.cli import app

    if "search" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        return None, "this autoq has no `search` command yet"
    if not data.exists():
        return None, f"WikiText-2 file {data} is missing (pass --data)"
    try:
        from autoq.models.hf import smollm2_gguf
        from transformers import AutoTokenizer

        gguf = smollm2_gguf()  # offline tokenizer; its ids (< 49152) fit the 128256 vocab
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # noqa: BLE001
        return None, f"no offline tokenizer for the search ({e.__class__.__name__}: {e})"
    folder = out / "llama-3.2-1b-arch"
    loaded.model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cmd = [sys.executable, "-m", "autoq.cli", "search", "--model", f"hf:{folder}",
           "--data", str(data), "--trials", str(trials), "--target-ppl", "1e12",
           "--speed", "predicted", "--out", str(out / "search"), "--quiet"]
    say("timing: " + " ".join(cmd))
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    minutes = (time.perf_counter() - t) / 60
    if done.returncode != 0:
        return None, f"autoq search failed (exit {done.returncode}): {done.stderr[-500:]}"
    return minutes, (f"{trials} trials, random-weight Llama-3.2-1B architecture, SmolLM2 "
                     f"tokenizer, {data.name}, --speed predicted, target ppl 1e12 (every "
                     f"trial feasible)")


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


def summarize(rows: list[dict], device: str, tiny: bool, search: tuple) -> dict:
    lm = [r for r in rows if "tokens_per_s" in r]
    fp = max((r for r in lm if r["plan"] == "fp"), key=lambda r: r["tokens_per_s"])
    small = [r for r in lm if r["plan"] != "fp" and r["bits_per_weight"] <= BPW_LIMIT]
    best = max(small, key=lambda r: r["tokens_per_s"])
    worst = max(lm, key=lambda r: r["predicted_error"])
    out = {"device": device, "tiny": tiny,
           "fp16_tokens_per_s": fp["tokens_per_s"],
           "quantized_tokens_per_s": best["tokens_per_s"],
           "quantized_bits_per_weight": best["bits_per_weight"],
           "quantized_plan": best["plan"], "quantized_backend": best["backend"],
           "speedup_vs_fp16": best["tokens_per_s"] / fp["tokens_per_s"],
           "predicted_vs_measured_error": worst["predicted_error"],
           "predicted_vs_measured_worst": f"{worst['plan']} / {worst['backend']}",
           "predicted_vs_measured_plans": len(lm),
           "search_100_trials_minutes": search[0], "search_note": search[1],
           "unquantized_dtype": "fp16" if "cuda" in device.lower() or not tiny else "fp32",
           "protocol": fp.get("speed_protocol", "")}
    if not tiny:
        out["goals"] = {
            "tokens_per_s >= 1500": best["tokens_per_s"] >= GOALS["tokens_per_s"],
            "speedup >= 2.5": out["speedup_vs_fp16"] >= GOALS["speedup"],
            "latency model within 10%": worst["predicted_error"] <= GOALS["latency_error"],
            "100 trials <= 30 min": search[0] is not None
            and search[0] <= GOALS["search_minutes"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT / "results/gpu")
    ap.add_argument("--data", type=Path, default=WIKITEXT, help="wiki.test.raw for the search")
    ap.add_argument("--search-trials", type=int, default=100, help="0 skips the search timing")
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

    llama = build_llama(args.tiny, device, dtype)
    lm_speed = {"new_tokens": 8, "repeats": 2} if args.tiny else {}  # else the GPU default
    rows = run_plans(llama, LM_PLANS, backends, cache_dir, (), lm_speed, say)
    search = (None, "skipped with --tiny") if args.tiny else \
        (None, "skipped (--search-trials 0)") if args.search_trials <= 0 else \
        time_search(llama, args.out, args.search_trials, args.data, say)
    del llama
    if cuda:
        torch.cuda.empty_cache()
    deit = build_deit(args.tiny, device, dtype)
    rows += run_plans(deit, VIT_PLANS, backends, cache_dir, (1, 8) if args.tiny else (1, 256),
                      {}, say)

    summary = summarize(rows, device_name(device), args.tiny, search)
    summary["backends"] = backends
    summary["skipped_backends"] = skipped
    summary["versions"] = {"torch": torch.__version__}
    write_json(args.out / "plans.json", rows)
    write_atomic(args.out / "plans.md", markdown(rows))
    write_json(args.out / "summary.json", summary)
    say(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
