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
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  (imported before forking; CUDA is touched only in the parts)

from autoq.io import write_atomic, write_json  # noqa: E402

FORMAT = "autoq.gpu_check/1"
PARTS = ("lm", "vit", "search")
SHARES = {"lm": 0.45, "vit": 0.07, "search": 0.48}
SUMMARY_RESERVE_S = 10.0   # the summary, and removing the scratch folder
GOALS = {"tokens_per_s": 1500.0, "speedup": 2.5, "latency_error": 0.10, "search_minutes": 30.0}
BPW_LIMIT = 4.5
TOLERANCE_FLOORS = 4.0
PROBE_TOKENS = 8
# Kernel shapes a fresh search process tunes with gemlite's own setting ('fast'), for
# llama-per-layer on Llama-3.2-1B: GEMM-like (scoring at seq_len tokens: 4 decoder shapes x
# 6 gemlite options of the space and baselines; the prompt prefill of each speed measured:
# ~16) and GEMV (the latency model at batch 1: 5 shapes x 5 options, + 4 for 2:64).
AUTOTUNE_GEMM_SHAPES, AUTOTUNE_GEMV_SHAPES = 40, 29
OUT_FILES = ("summary.json", "plans.md", "gpu_check.log", "search_trials.jsonl")

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
LM_NAME, LM_NAME_TINY = "llama-3.2-1b-arch", "llama-3.2-1b-arch-tiny"
# gemlite autotuning in the lm part: tuned batch-1 kernels (what decode runs and is timed),
# one config for the GEMM kernels that only the untimed prompt prefill uses (each kernel
# shape tunes ~20 configs on a cold process; that is minutes over a plan's shapes).
LM_AUTOTUNE = {"GEMV": "fast", "GEMV_REVSPLITK": "fast", "GEMV_SPLITK": "fast",
               "GEMM_SPLITK": "default", "GEMM": "default"}
# The search's space in --tiny: the shipped llama-per-layer, with fewer baselines.
TINY_SPACE = """format: autoq.space/1
options: [null, "8:64", "4:32", "4:64", "4:128", "3:64", "2:32"]
groups:
  - {name: decoder, match: '\\.layers\\.\\d+\\.', per_layer: true}
ignore: ['lm_head']
baselines: ["8:64", "4:64"]
"""
MIXED = "mixed <=4.5"


# ---- logging -------------------------------------------------------------------------
LOG_PATH: Path | None = None
T0 = time.time()


def log(message: str) -> None:
    line = f"[{time.time() - T0:7.1f}s {os.getpid()}] {message}"
    print(line, file=sys.stderr, flush=True)
    if LOG_PATH is not None:
        with open(LOG_PATH, "a") as f:
            f.write(line + "\n")


def error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {first[0][:300] if first else ''}"


# ---- plans ---------------------------------------------------------------------------
def mixed_plan_json(model: str, blocks: int) -> dict:
    """<= 4.5 bits/weight, lm_head quantized: 4-bit groups of 128 by default, 8-bit on the
    v_proj of every block and the down_proj of the first and last, lm_head 4:64."""
    q8, q4 = {"nbits": 8, "group_size": 64}, {"nbits": 4, "group_size": 64}
    layers = {"lm_head": q4}
    layers.update({f"model.layers.{b}.self_attn.v_proj": q8 for b in range(blocks)})
    layers.update({f"model.layers.{b}.mlp.down_proj": q8 for b in (0, blocks - 1)})
    return {"format": "autoq.plan/1", "model": model, "layers": layers,
            "default": {"nbits": 4, "group_size": 128}}


# The tied embedding/lm_head table as one quantized tensor (same config as lm_head).
EMBEDDING = {"model.embed_tokens": {"nbits": 4, "group_size": 64}}


def with_embedding(obj: dict, shapes, keep) -> tuple[dict, dict]:
    """The plan with the embedding quantized too when this autoq's plans validate such an
    entry against the model (the capability check); else the plan as it was, and why."""
    from autoq.errors import UserError
    from autoq.plan import Plan

    trial = {**obj, "layers": {**obj["layers"], **EMBEDDING}}
    try:
        Plan.from_json(trial, "mixed plan").resolve(shapes, keep, "mixed plan")
    except UserError as e:
        return obj, {"quantized": False, "why": str(e)}
    return trial, {"quantized": True}


def fp_label(dtype) -> str:
    """The unquantized model's plan name: fp16 on a GPU, fp32 on a CPU."""
    return f"fp{torch.finfo(dtype).bits}"


def lm_plans(loaded, name: str) -> list[tuple[str, dict, dict]]:
    """(plan name, resolved plan, notes) in the order they are measured (the goal plan
    first after fp16: it is what the budget must not cut)."""
    from autoq.plan import LayerConfig, Plan, uniform_plan

    shapes, keep = loaded.shapes(), loaded.keep()
    blocks = loaded.model.config.num_hidden_layers
    obj, embedding = with_embedding(mixed_plan_json(name, blocks), shapes, keep)
    out = [(fp_label(loaded.dtype), {n: None for n in shapes}, {}),
           (MIXED, Plan.from_json(obj).resolve(shapes, keep), {"embedding": embedding})]
    for label, cfg in (("u4 (4:64)", "4:64"), ("u8 (8:64)", "8:64"),
                       ("u3 (3:64, fallback)", "3:64")):
        plan = uniform_plan(name, LayerConfig.parse(cfg), shapes, keep)
        out.append((label, plan.resolve(shapes, keep), {}))
    return out


# ---- models ----------------------------------------------------------------------------
def llama_config(tiny: bool, vocab_at_least: int = 0):
    from transformers import LlamaConfig

    values = dict(LLAMA_TINY if tiny else LLAMA_3_2_1B)
    if vocab_at_least > values["vocab_size"]:
        values["vocab_size"] = -(-vocab_at_least // 64) * 64
    return LlamaConfig(**values)


def build_llama(config, device, dtype, name: str, tokenizer=None):
    from transformers import AutoModelForCausalLM

    from autoq.kinds import KINDS
    from autoq.models import LoadedModel

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    loaded = LoadedModel(name, KINDS["lm"], model, device, dtype, tokenizer=tokenizer)
    loaded.heads = loaded.kind.heads(model)
    return loaded


def build_deit(tiny: bool, device, dtype):
    import timm

    from autoq.kinds import KINDS
    from autoq.models import LoadedModel

    torch.manual_seed(0)
    kwargs = dict(DEIT_TINY) if tiny else {}
    model = timm.create_model(DEIT, pretrained=False, num_classes=100, **kwargs)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    loaded = LoadedModel("deit-s" + ("-tiny" if tiny else ""), KINDS["vit"], model, device,
                         dtype, arch={"family": "timm", "name": DEIT, "kwargs": kwargs})
    loaded.heads = loaded.kind.heads(model)
    return loaded


def load_tokenizer(folder: Path | None):
    """The carried tokenizer files; without them, SmolLM2's from its GGUF (needs gguf)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if folder is not None and (folder / "tokenizer.json").exists():
        try:
            return AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001  (another transformers: the plain file)
            log(f"AutoTokenizer could not read {folder} ({error_text(e)}); using tokenizer.json")
            return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    from autoq.models.hf import smollm2_gguf

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


# ---- measuring helpers ----------------------------------------------------------------
def environment(device) -> dict:
    from autoq.latency import device_name, package_version

    env = {"device": device_name(device), "device_type": device.type,
           "python": platform.python_version(),
           "versions": {p: package_version(p) for p in (
               "torch", "transformers", "triton", "hqq", "gemlite", "optuna", "timm",
               "tokenizers", "numpy")}}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(capability=f"{p.major}.{p.minor}", memory_gib=p.total_memory / 2**30,
                   multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                   l2_mib=getattr(p, "L2_cache_size", 0) / 2**20)
    return env


@torch.inference_mode()
def decode_logits(loaded, ids: torch.Tensor) -> torch.Tensor:
    """Logits of `ids` decoded one token at a time (batch 1, one token per forward: the
    serving shape, so gemlite runs the kernels decode runs), as float on the CPU."""
    cache, outs = None, []
    for i in range(ids.shape[1]):
        out = loaded.model(input_ids=ids[:, i:i + 1].to(loaded.device), past_key_values=cache,
                           use_cache=True)
        cache = out.past_key_values
        outs.append(out.logits[:, -1].float().cpu())
    return torch.cat(outs)


def probe_ids(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (1, PROBE_TOKENS), generator=g)


def copy_bandwidth(device, gib: float = 1.0, repeats: int = 10) -> float:
    """Device-to-device copy GB/s (bytes read + written), the memory roofline."""
    n = int(gib * 2**30)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        b.copy_(a)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * repeats / seconds / 1e9


def read_bytes(loaded, size_bytes: int) -> int:
    """Bytes a decode step reads: the model's bytes, less the embedding table when the
    head does not read it (an embedding lookup reads one row)."""
    from torch import nn

    emb = loaded.model.get_input_embeddings()
    head = loaded.model.get_output_embeddings()
    w = getattr(emb, "weight", None)
    if not isinstance(w, torch.Tensor):
        return size_bytes
    shared = isinstance(head, nn.Linear) and head.weight.data_ptr() == w.data_ptr()
    return size_bytes if shared else size_bytes - w.numel() * w.element_size()


def options_of(resolved) -> list:
    return sorted({c for c in resolved.values() if c is not None},
                  key=lambda c: (c.nbits, c.group_size or 0))


# ---- a part's state: saved after every step, read by the parent ------------------------
class PartState:
    def __init__(self, name: str, path: Path, share: float, deadline: float):
        self.path, self.deadline = path, deadline
        self.data = {"part": name, "status": "running", "share_s": share, "started": time.time(),
                     "done": [], "failed": {}, "skipped": {}, "current": None}
        self.save()

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        write_json(self.path, self.data)

    def set(self, **kw) -> None:
        self.data.update(kw)
        self.save()

    def add(self, key: str, value) -> None:
        self.data.setdefault(key, []).append(value)
        self.save()

    def run(self, steps: list[tuple[str, Callable[[], None]]], min_left: float = 1.0) -> None:
        """Run the steps in order; one that raises is recorded and the rest go on; none
        starts with less than `min_left` seconds of the share left."""
        self.set(steps=[n for n, _ in steps])
        for name, fn in steps:
            if self.left() < min_left:
                self.data["skipped"][name] = "no time left in this part's share"
                self.save()
                continue
            self.set(current=name)
            t = time.perf_counter()
            log(f"{self.data['part']}: {name}")
            try:
                fn()
            except Exception as e:  # noqa: BLE001  (recorded; the next step runs)
                self.data["failed"][name] = error_text(e)
                log(f"{self.data['part']}: {name} failed: {error_text(e)}\n"
                    + "".join(traceback.format_exc(limit=12)))
            else:
                self.data["done"].append(name)
                log(f"{self.data['part']}: {name} done in {time.perf_counter() - t:.1f} s")
            self.set(current=None)


# ---- part: lm ----------------------------------------------------------------------------
def part_lm(state: PartState, ctx: argparse.Namespace) -> None:
    from autoq.backends import prepare_, require_backend
    from autoq.latency import LatencyModel
    from autoq.models import pick_device, pick_dtype
    from autoq.quant import LayerCache, quantize_
    from autoq.size import measure

    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    state.set(env=environment(device))
    backend = require_backend("auto", device)
    if backend == "gemlite":
        import gemlite

        gemlite.set_autotune(LM_AUTOTUNE)
    name = LM_NAME_TINY if ctx.tiny else LM_NAME
    loaded = build_llama(llama_config(ctx.tiny), device, dtype, name)
    shapes = loaded.shapes()
    speed_kwargs = {"new_tokens": 8, "repeats": 2} if ctx.tiny else {}
    ids = probe_ids(loaded.model.config.vocab_size)
    cache_dir = ctx.work / "lm"
    plans = lm_plans(loaded, name)
    caches: dict[str, LayerCache] = {}
    info = {"model": name, "dtype": str(dtype).removeprefix("torch."), "backend": backend,
            "gemlite_autotune": LM_AUTOTUNE if backend == "gemlite" else None,
            "speed_kwargs": speed_kwargs, "layers": len(shapes),
            "plans": {p: notes for p, _, notes in plans},
            "probe": f"{PROBE_TOKENS} random tokens decoded one at a time, logits compared"}
    state.set(info=info)

    def bandwidth():
        state.set(copy_gb_per_s=copy_bandwidth(device))

    def floor():
        ref = decode_logits(loaded, ids)
        wide_dtype = torch.float64 if dtype == torch.float32 else torch.float32
        wide = copy.copy(loaded)
        wide.model = copy.deepcopy(loaded.model).to(wide_dtype)
        wide.dtype = wide_dtype
        exact = decode_logits(wide, ids)
        del wide
        if device.type == "cuda":
            torch.cuda.empty_cache()
        f = (ref.double() - exact.double()).abs().max().item()
        state.set(floor={"max_abs_diff": f, "vs": str(wide_dtype).removeprefix("torch."),
                         "logit_max_abs": exact.abs().max().item(),
                         "tolerance": TOLERANCE_FLOORS * f})

    def row(plan: str, resolved, backend: str, engine: str | None = None):
        kwargs = dict(speed_kwargs, **({"engine": engine} if engine else {}))
        t = time.perf_counter()
        lat = LatencyModel.for_model(loaded, options_of(resolved), backend, cache_dir,
                                     speed_kwargs=kwargs, only=resolved)
        lat_s = time.perf_counter() - t
        t = time.perf_counter()
        quantize_(loaded.model, resolved, device=device, dtype=dtype,
                  cache=caches.setdefault(plan, LayerCache()))
        quant_s = time.perf_counter() - t
        size = measure(loaded.model)
        quantized = any(c is not None for c in resolved.values())
        ref = decode_logits(loaded, ids) if quantized else None
        t = time.perf_counter()
        served = prepare_(loaded.model, backend)
        convert_s = time.perf_counter() - t
        r = {"model": name, "plan": plan, "quantized": quantized,
             "backend": backend if quantized else "torch",
             "bits_per_weight": size.bits_per_weight if quantized else
             float(torch.finfo(dtype).bits), "size_mib": size.size_mib,
             "gemlite_layers": served["gemlite_layers"], "fallback_layers": len(served["fallback"]),
             "fallback_reasons": sorted(set(served["fallback"].values())),
             "quantize_s": quant_s, "convert_s": convert_s, "latency_model_s": lat_s}
        if ref is not None:
            out = decode_logits(loaded, ids)
            r["served_max_abs_diff"] = (out - ref).abs().max().item()
            r["served_top1_agreement"] = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        s = loaded.kind.speed(loaded, size.size_bytes, **kwargs)
        rb = read_bytes(loaded, size.size_bytes)
        predicted = lat.predict(resolved)
        head = lat.layer_time("lm_head", resolved.get("lm_head")) if "lm_head" in shapes else 0.0
        r.update(tokens_per_s=s["tokens_per_s"], speed_engine=s["speed_engine"],
                 speed_protocol=s["speed_protocol"], achieved_gb_per_s=s["achieved_gb_per_s"],
                 read_mib=rb / 2**20, read_gb_per_s=rb * s["tokens_per_s"] / 1e9,
                 predicted_tokens_per_s=1.0 / predicted,
                 predicted_error=abs(1.0 / predicted - s["tokens_per_s"]) / s["tokens_per_s"],
                 predicted_ms={"total": predicted * 1e3, "rest": lat.rest_seconds * 1e3,
                               "linears": (predicted - lat.rest_seconds) * 1e3,
                               "lm_head": head * 1e3},
                 latency_mode=lat.mode)
        if "speed_engine_fallback" in s:
            r["speed_engine_fallback"] = s["speed_engine_fallback"]
        state.add("rows", r)
        log(f"lm: {plan} / {r['backend']} / {r['speed_engine']}: {r['bits_per_weight']:.3f} b/w, "
            f"{r['tokens_per_s']:.1f} tok/s (predicted {r['predicted_tokens_per_s']:.1f}, "
            f"{100 * r['predicted_error']:.1f}%), diff {r.get('served_max_abs_diff')}")

    def same_engine():
        """fp again with the engine the mixed plan ended up on, if that is another one
        (an engine fell back): the speed-up is a ratio within one engine."""
        rows = state.data.get("rows", [])
        fp = {r["speed_engine"] for r in rows if not r["quantized"]}
        mixed = next((r for r in rows if r["plan"] == MIXED), None)
        if mixed is not None and mixed["speed_engine"] not in fp:
            row(plans[0][0], plans[0][1], backend, mixed["speed_engine"])

    steps = []
    if device.type == "cuda":
        steps.append(("memory bandwidth", bandwidth))
    steps.append(("rounding floor", floor))
    for i, (plan, resolved, _) in enumerate(plans):
        steps.append((f"{plan} / {backend}", lambda p=plan, r=resolved: row(p, r, backend)))
        if i == 1:
            steps.append((f"{plans[0][0]} with the mixed plan's engine", same_engine))
    if backend != "hqq":
        for plan, resolved, _ in plans[1:]:
            steps.append((f"{plan} / hqq", lambda p=plan, r=resolved: row(p, r, "hqq")))
    if ctx.compiled:
        for plan, resolved, _ in plans[:2]:
            steps.append((f"{plan} / {backend} / compiled",
                          lambda p=plan, r=resolved: row(p, r, backend, "compiled")))
    state.run(steps)


# ---- part: vit ---------------------------------------------------------------------------
def part_vit(state: PartState, ctx: argparse.Namespace) -> None:
    from autoq import speed
    from autoq.backends import prepare_, require_backend
    from autoq.latency import LatencyModel
    from autoq.models import pick_device, pick_dtype
    from autoq.plan import LayerConfig, uniform_plan
    from autoq.quant import LayerCache, quantize_
    from autoq.size import measure

    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    state.set(env=environment(device))
    backend = require_backend("auto", device)
    loaded = build_deit(ctx.tiny, device, dtype)
    shapes = loaded.shapes()
    big = 8 if ctx.tiny else 256
    cache_dir = ctx.work / "vit"
    plans = [(fp_label(dtype), {n: None for n in shapes})]
    if ctx.vit_quantized:
        for label in ("8:64", "4:64"):
            plan = uniform_plan(loaded.spec, LayerConfig.parse(label), shapes, loaded.heads)
            plans.append((f"u{label[0]} ({label})", plan.resolve(shapes, loaded.heads)))
    state.set(info={"model": loaded.spec, "dtype": str(dtype).removeprefix("torch."),
                    "backend": backend, "batches": [1, big]})

    def row(plan, resolved):
        lat = LatencyModel.for_model(loaded, options_of(resolved), backend, cache_dir,
                                     only=resolved)
        quantize_(loaded.model, resolved, device=device, dtype=dtype, cache=LayerCache())
        size = measure(loaded.model)
        quantized = any(c is not None for c in resolved.values())
        ref = loaded.kind.probe_output(loaded) if quantized else None
        served = prepare_(loaded.model, backend)
        r = {"model": loaded.spec, "plan": plan, "quantized": quantized,
             "backend": backend if quantized else "torch",
             "bits_per_weight": size.bits_per_weight if quantized else
             float(torch.finfo(dtype).bits), "size_mib": size.size_mib,
             "gemlite_layers": served["gemlite_layers"], "fallback_layers": len(served["fallback"])}
        if ref is not None:
            r["served_max_abs_diff"] = (loaded.kind.probe_output(loaded) - ref).abs().max().item()
        for batch in (1, big):
            r[f"images_per_s_b{batch}"] = speed.vit_images(loaded, batch)["images_per_s"]
        predicted = 1.0 / lat.predict(resolved)
        r.update(predicted_images_per_s=predicted,
                 predicted_error=abs(predicted - r["images_per_s_b1"]) / r["images_per_s_b1"])
        state.add("rows", r)
        log(f"vit: {plan} / {r['backend']}: b1 {r['images_per_s_b1']:.1f}/s, b{big} "
            f"{r[f'images_per_s_b{big}']:.1f}/s (predicted b1 {predicted:.1f})")

    state.run([(f"{p} / {backend}", lambda p=p, r=r: row(p, r)) for p, r in plans])


# ---- part: search ------------------------------------------------------------------------
def autotune_probe(state: PartState, seq_len: int) -> None:
    """gemlite's autotuning cost for one kernel shape (2048 -> 8192, 4:32): first call
    minus a later one, at batch 1 (GEMV, decode) and at seq_len tokens (GEMM, scoring)."""
    from autoq.latency import timing_layer
    from autoq.plan import LayerConfig

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
    from autoq.backends import require_backend
    from autoq.evaluate import EvalSettings
    from autoq.models import MODELS, pick_device, pick_dtype, register
    from autoq.search.run import search
    from autoq.search.session import SearchSettings

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

    space = None  # the model family's shipped space (llama-per-layer)
    if ctx.tiny:
        space = ctx.work / "tiny-space.yaml"
        space.write_text(TINY_SPACE)
        info["space"] = "llama-per-layer with baselines 8:64 and 4:64 only"

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

    from autoq import backends, latency, size, speed  # noqa: F401
    from autoq.search import run  # noqa: F401


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
def not_measured(goal: str, why: str) -> dict:
    return {"goal": goal, "met": None, "measured": None, "why": why}


def part_why(states: dict, part: str) -> str:
    s = states.get(part, {})
    status = s.get("status", "not run")
    if status == "done":
        return f"the {part} part did not measure it (see its failed/skipped steps)"
    during = s.get("stopped_during")
    return f"the {part} part is {status}" + (f" (during {during!r})" if during else "") + \
        (f": {s['error']}" if s.get("error") else "")


def lm_figures(states: dict) -> tuple[dict, dict]:
    lm = states.get("lm", {})
    rows = lm.get("rows", [])
    backend = lm.get("info", {}).get("backend")
    floor = lm.get("floor", {})
    bw = lm.get("copy_gb_per_s")
    figures: dict = {"lm_backend": backend, "copy_gb_per_s": bw}
    goals: dict = {}
    g_tok = f">= {GOALS['tokens_per_s']:g} tokens/s, batch 1, the <= {BPW_LIMIT} bits/weight plan"
    g_speed = f">= {GOALS['speedup']:g}x fp16, same engine, same run"
    g_lat = f"latency model within {GOALS['latency_error']:.0%} on every LM plan"
    g_match = ("gemlite's logits match HQQ's reference forward within the fp16 tolerance "
               f"({TOLERANCE_FLOORS:g}x the measured fp16 rounding floor) on every gemlite plan")
    # the goal pair: the mixed plan on the serving backend and fp16, with the same engine
    pairs = []
    for q in (r for r in rows if r["plan"] == MIXED and r["backend"] == backend):
        fp = next((r for r in rows if not r["quantized"]
                   and r["speed_engine"] == q["speed_engine"]), None)
        if fp is not None:
            pairs.append((q, fp))
    if pairs:
        q, fp = max(pairs, key=lambda p: p[0]["tokens_per_s"])
        pm = q["predicted_ms"]
        ms = 1e3 / q["tokens_per_s"]
        speedup = q["tokens_per_s"] / fp["tokens_per_s"]
        figures.update(fp16_tokens_per_s=fp["tokens_per_s"], quantized_plan=q["plan"],
                       quantized_tokens_per_s=q["tokens_per_s"],
                       quantized_bits_per_weight=q["bits_per_weight"], speedup_vs_fp16=speedup,
                       engine=q["speed_engine"], quantized_read_gb_per_s=q["read_gb_per_s"])
        roof = f"; its {q['read_mib']:.0f} MiB of weights at the measured copy bandwidth " \
               f"({bw:.0f} GB/s) would take {q['read_mib'] * 2**20 / (bw * 1e9) * 1e3:.3f} ms" \
            if bw else ""
        parts = {"rest (attention, norms, embedding, argmax, gaps between kernels)": pm["rest"],
                 "linear layers other than lm_head": pm["linears"] - pm["lm_head"],
                 "lm_head": pm["lm_head"]}
        top = max(parts, key=parts.get)
        limit = (f"{ms:.3f} ms per token; the latency model splits it into rest {pm['rest']:.3f} "
                 f"ms + linear layers {pm['linears']:.3f} ms (lm_head {pm['lm_head']:.3f} ms)"
                 f"{roof}: the largest term is {top}")
        ok_bits = q["bits_per_weight"] <= BPW_LIMIT + 1e-9
        met = q["tokens_per_s"] >= GOALS["tokens_per_s"] and ok_bits
        goals["decode_tokens_per_s"] = {
            "goal": g_tok, "met": met, "measured": q["tokens_per_s"], "plan": q["plan"],
            "bits_per_weight": q["bits_per_weight"], "engine": q["speed_engine"]}
        if not met:
            goals["decode_tokens_per_s"]["limited_by"] = limit if ok_bits else \
                f"the plan has {q['bits_per_weight']:.3f} bits/weight, over {BPW_LIMIT}"
        fp_ms = 1e3 / fp["tokens_per_s"]
        bound = fp_ms / (pm["rest"] + pm["linears"]) if pm["linears"] > 0 else None
        goals["speedup_vs_fp16"] = {
            "goal": g_speed, "met": speedup >= GOALS["speedup"], "measured": speedup,
            "fp16_tokens_per_s": fp["tokens_per_s"], "engine": q["speed_engine"]}
        if speedup < GOALS["speedup"]:
            goals["speedup_vs_fp16"]["limited_by"] = (
                f"fp16 {fp_ms:.3f} ms vs {ms:.3f} ms per token; the quantized model reads "
                f"{fp['read_mib'] / q['read_mib']:.2f}x fewer bytes, but the rest term "
                f"({pm['rest']:.3f} ms: attention, norms, launch gaps) does not shrink with the "
                f"weights and the linear kernels take {pm['linears']:.3f} ms"
                + (f"; with this rest term no weight format gets past "
                   f"{fp_ms / pm['rest']:.2f}x" if pm["rest"] > 0 else ""))
        figures["latency_model_predicted_speedup"] = bound
    else:
        why = part_why(states, "lm") if states.get("lm", {}).get("status") != "done" or \
            not rows else "no fp16 and mixed-plan rows with the same engine"
        goals["decode_tokens_per_s"] = not_measured(g_tok, why)
        goals["speedup_vs_fp16"] = not_measured(g_speed, why)
    errs = [r for r in rows if "predicted_error" in r]
    if errs:
        worst = max(errs, key=lambda r: r["predicted_error"])
        met = worst["predicted_error"] <= GOALS["latency_error"]
        goals["latency_model_error"] = {
            "goal": g_lat, "met": met, "measured": worst["predicted_error"],
            "worst": f"{worst['plan']} / {worst['backend']} / {worst['speed_engine']}",
            "plans": len(errs), "complete": states.get("lm", {}).get("status") == "done"}
        if not met:
            pm = worst["predicted_ms"]
            mismatch = [r for r in errs if r.get("speed_engine_fallback")]
            goals["latency_model_error"]["limited_by"] = (
                f"{worst['plan']}: predicted {worst['predicted_tokens_per_s']:.1f}, measured "
                f"{worst['tokens_per_s']:.1f} tokens/s (rest {pm['rest']:.3f} ms measured once on "
                f"fp16, layers {pm['linears']:.3f} ms timed one by one in mode "
                f"{worst['latency_mode']!r} with the engine {worst['speed_engine']!r})"
                + (f"; engines fell back on {len(mismatch)} rows, so layers and decode were "
                   "timed differently" if mismatch else ""))
        figures["latency_worst_error"] = worst["predicted_error"]
    else:
        goals["latency_model_error"] = not_measured(g_lat, part_why(states, "lm"))
    served = [r for r in rows if r["backend"] == "gemlite" and "served_max_abs_diff" in r]
    tol = floor.get("tolerance")
    if served and tol is not None:
        worst = max(served, key=lambda r: r["served_max_abs_diff"])
        met = all(r["served_max_abs_diff"] <= tol for r in served)
        goals["gemlite_matches_hqq"] = {
            "goal": g_match, "met": met, "measured": worst["served_max_abs_diff"],
            "worst": worst["plan"], "tolerance": tol, "fp16_floor": floor.get("max_abs_diff"),
            "logit_max_abs": floor.get("logit_max_abs"), "plans": len(served)}
        if not met:
            goals["gemlite_matches_hqq"]["limited_by"] = (
                f"{worst['plan']}: max |gemlite - hqq| {worst['served_max_abs_diff']:.4g} > "
                f"{tol:.4g} ({TOLERANCE_FLOORS:g} x floor {floor.get('max_abs_diff'):.3g}); top-1 "
                f"agreement {worst.get('served_top1_agreement', float('nan')):.2%}")
    else:
        why = f"the serving backend is {backend} (gemlite needs CUDA and the gemlite package)" \
            if backend and backend != "gemlite" else part_why(states, "lm")
        goals["gemlite_matches_hqq"] = not_measured(g_match, why)
    return figures, goals


def search_figures(states: dict) -> tuple[dict, dict]:
    s = states.get("search", {})
    srch = s.get("search", {})
    info = s.get("info", {})
    goal = f"100 trials extrapolate to <= {GOALS['search_minutes']:g} min, sensitivity included"
    calls = srch.get("calls", [])
    trials = [t for t in srch.get("trials", []) if t["state"] in ("COMPLETE", "PRUNED")
              and t["seconds"] is not None]
    fig = {"search_trials_finished": len(trials)}
    if not calls or not trials:
        return fig, {"search_100_trials": not_measured(goal, part_why(states, "search"))}
    first_call = calls[0]
    trials.sort(key=lambda t: t["start"])
    in_first = [t for t in trials if t["start"] <= (first_call["end"] or math.inf)]
    setup = trials[0]["start"] - first_call["start"]
    first = trials[0]["seconds"]
    later = [t["seconds"] for t in trials[1:]]
    per = statistics.mean(later) if later else first
    finalize = None
    if first_call["end"] and not first_call["interrupted"] and in_first:
        last = max(t["start"] + t["seconds"] for t in in_first)
        finalize = first_call["end"] - last
    messages = srch.get("messages", [])
    base = [t for t, m in messages if m.startswith("baseline")]
    load = base[0] if base else None
    baselines = (base[-1] - base[0]) if len(base) > 1 else None
    total = setup + first + 99 * per + (finalize or 0.0)
    fig.update(search_setup_s=setup, search_load_s=load, search_baselines_s=baselines,
               search_sensitivity_s=srch.get("sensitivity_seconds"),
               search_first_trial_s=first, search_seconds_per_trial=per,
               search_seconds_per_trial_median=statistics.median(later) if later else first,
               search_scoring_s_per_trial=statistics.mean(
                   [t["eval_seconds"] for t in trials if t["eval_seconds"] is not None] or [0.0]),
               search_finalize_s=finalize, search_100_trials_minutes=total / 60)
    autotune = s.get("autotune_probe") or {}
    extra = None
    if info.get("gemlite_autotune") not in (None, "fast") and "gemv_m1" in autotune:
        # what a fresh process with gemlite's own setting ('fast') tunes first: the 5
        # servable options x 4 decoder shapes scored (GEMM), x 5 shapes timed (GEMV)
        gemm = next((v for k, v in autotune.items() if k.startswith("gemm")), {})
        extra = AUTOTUNE_GEMM_SHAPES * gemm.get("autotune_s", 0.0) + \
            AUTOTUNE_GEMV_SHAPES * autotune["gemv_m1"]["autotune_s"]
        fig["search_autotune_estimate_s"] = extra
        fig["search_autotune_note"] = (
            f"the search ran with gemlite autotune {info.get('gemlite_autotune')!r}; with its "
            f"default ('fast') a fresh process first tunes ~{AUTOTUNE_GEMM_SHAPES} GEMM and "
            f"~{AUTOTUNE_GEMV_SHAPES} GEMV kernel shapes (probed cost per shape x count)")
    minutes = (total + (extra or 0.0)) / 60
    g = {"goal": goal, "met": minutes <= GOALS["search_minutes"], "measured": minutes,
         "trials_measured": len(trials), "complete": s.get("status") == "done",
         "formula": "setup (load, baselines, sensitivity, prior) + first trial (builds the "
                    "latency model) + 99 x mean later trial + finalize"
                    + (" + gemlite autotune estimate" if extra else "")}
    if len(trials) < 10:
        g["note"] = f"only {len(trials)} trials were measured (10 were asked for)"
    if not g["met"]:
        terms = {"setup": setup, "first trial": first, "99 later trials": 99 * per,
                 "finalize": finalize or 0.0, "gemlite autotuning": extra or 0.0}
        top = max(terms, key=terms.get)
        g["limited_by"] = (f"{top} ({terms[top] / 60:.1f} min); a trial takes {per:.1f} s, of "
                           f"which scoring {fig['search_scoring_s_per_trial']:.1f} s (the rest: "
                           "swapping cached layers in, gemlite conversion, bookkeeping)")
    return fig, {"search_100_trials": g}


def vit_figures(states: dict) -> dict:
    rows = states.get("vit", {}).get("rows", [])
    fp = next((r for r in rows if not r["quantized"]), None)
    if fp is None:
        return {}
    return {k.replace("images_per_s", "deit_images_per_s"): v for k, v in fp.items()
            if k.startswith("images_per_s")}


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


def fmt(x, spec: str = ".1f") -> str:
    return "" if x is None else format(x, spec)


def markdown(summary: dict) -> str:
    head = ("| model | plan | backend | engine | bits/weight | size MiB | speed (/s) | GB/s "
            "(read) | predicted (/s) | error | served max abs diff | gemlite / fallback layers |\n"
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in summary["lm"].get("rows") or []:
        lines.append(
            f"| {r['model']} | {r['plan']} | {r['backend']} | {r['speed_engine']} | "
            f"{r['bits_per_weight']:.3f} | {r['size_mib']:.1f} | {r['tokens_per_s']:.1f} tok | "
            f"{r['read_gb_per_s']:.0f} | {r['predicted_tokens_per_s']:.1f} | "
            f"{100 * r['predicted_error']:.1f}% | {fmt(r.get('served_max_abs_diff'), '.3g')} | "
            f"{r['gemlite_layers']} / {r['fallback_layers']} |")
    for r in summary["vit"].get("rows") or []:
        sp = " / ".join(f"{v:.1f} img@b{k.removeprefix('images_per_s_b')}" for k, v in r.items()
                        if k.startswith("images_per_s_b"))
        lines.append(
            f"| {r['model']} | {r['plan']} | {r['backend']} | eager | {r['bits_per_weight']:.3f} "
            f"| {r['size_mib']:.1f} | {sp} | | {r['predicted_images_per_s']:.1f} (b1) | "
            f"{100 * r['predicted_error']:.1f}% | {fmt(r.get('served_max_abs_diff'), '.3g')} | "
            f"{r['gemlite_layers']} / {r['fallback_layers']} |")
    device = summary.get("device") or "unknown device"
    what = "tiny configs (a CPU smoke test, not a measurement)" if summary["tiny"] else \
        "random weights (speed and size only)"
    note = f"\n{device}; {what}.\n"
    return head + "\n".join(lines) + "\n" + note


def goal_lines(summary: dict) -> list[str]:
    out = []
    for key, g in summary["goals"].items():
        met = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        measured = g.get("measured")
        extra = g.get("limited_by") or g.get("why") or ""
        out.append(f"  {key}: {met}" + (f" ({measured:.4g})" if measured is not None else "")
                   + (f" - {extra}" if extra else ""))
    return out


def parse_shares(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        part, _, sec = item.partition("=")
        if part not in PARTS or not sec:
            raise SystemExit(f"--share {item!r}: write PART=SECONDS with PART one of {PARTS}")
        out[part] = float(sec)
    return out


def main(argv=None) -> int:
    global LOG_PATH
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
    LOG_PATH = ctx.out / "gpu_check.log"
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
