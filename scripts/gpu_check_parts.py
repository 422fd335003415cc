"""The GPU check's lm and vit parts (scripts/gpu_check.py runs each in a forked process).

Each plan is measured through the library's pipeline (autoq.pipeline): quantize it in
place on the loaded model (packed layers from a layer cache; the exact size), serve it
with the backend (the serving report), then time it with the model kind's speed
protocol and predict it with the latency model (autoq.serve.latency).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # scripts/: the check's files
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_check_common import (LM_AUTOTUNE, LM_NAME, LM_NAME_TINY, MIXED,  # noqa: E402
                              PROBE_TOKENS, TOLERANCE_FLOORS, PartState, build_llama,
                              environment, fp_label, llama_config, lm_plans, load_deit, log)


# ---- measuring helpers ----------------------------------------------------------------
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


# ---- part: lm ----------------------------------------------------------------------------
def part_lm(state: PartState, ctx: argparse.Namespace) -> None:
    from autoq import pipeline
    from autoq.models import pick_device, pick_dtype
    from autoq.quant.cache import LayerCache
    from autoq.serve import require_backend
    from autoq.serve.latency import LatencyModel

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
        size = pipeline.quantize(loaded, resolved, cache=caches.setdefault(plan, LayerCache()))
        quant_s = time.perf_counter() - t
        quantized = any(c is not None for c in resolved.values())
        ref = decode_logits(loaded, ids) if quantized else None   # HQQ's own forward
        t = time.perf_counter()
        served = pipeline.serve(loaded, backend)
        convert_s = time.perf_counter() - t
        r = {"model": name, "plan": plan, "quantized": quantized,
             "backend": backend if quantized else "torch",
             "bits_per_weight": size.bits_per_weight if quantized else
             float(torch.finfo(dtype).bits), "size_mib": size.size_mib,
             "served_layers": served["served_layers"], "fallback_layers": len(served["fallback"]),
             "fallback_reasons": sorted(set(served["fallback"].values())),
             "quantize_s": quant_s, "convert_s": convert_s, "latency_model_s": lat_s}
        if ref is not None:
            out = decode_logits(loaded, ids)
            r["served_max_abs_diff"] = (out - ref).abs().max().item()
            r["served_top1_agreement"] = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        s = loaded.kind.speed(loaded, size.size_bytes, **kwargs)
        rb = read_bytes(loaded, size.size_bytes)
        predicted, rest = lat.predict(resolved), lat.rest_time(resolved)
        head = lat.layer_time("lm_head", resolved.get("lm_head")) if "lm_head" in shapes else 0.0
        r.update(tokens_per_s=s["tokens_per_s"], speed_engine=s["speed_engine"],
                 speed_protocol=s["speed_protocol"], achieved_gb_per_s=s["achieved_gb_per_s"],
                 read_mib=rb / 2**20, read_gb_per_s=rb * s["tokens_per_s"] / 1e9,
                 predicted_tokens_per_s=1.0 / predicted,
                 predicted_error=abs(1.0 / predicted - s["tokens_per_s"]) / s["tokens_per_s"],
                 predicted_ms={"total": predicted * 1e3, "rest": rest * 1e3,
                               "linears": (predicted - rest) * 1e3,
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
    from autoq import pipeline
    from autoq.models import pick_device, pick_dtype
    from autoq.plan import uniform_plan
    from autoq.quant import LayerConfig
    from autoq.quant.cache import LayerCache
    from autoq.serve import require_backend
    from autoq.serve.latency import LatencyModel

    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    state.set(env=environment(device))
    backend = require_backend("auto", device)
    loaded = load_deit(ctx.tiny, device, dtype)
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
        size = pipeline.quantize(loaded, resolved, cache=LayerCache())
        quantized = any(c is not None for c in resolved.values())
        ref = loaded.kind.probe_output(loaded) if quantized else None
        served = pipeline.serve(loaded, backend)
        r = {"model": loaded.spec, "plan": plan, "quantized": quantized,
             "backend": backend if quantized else "torch",
             "bits_per_weight": size.bits_per_weight if quantized else
             float(torch.finfo(dtype).bits), "size_mib": size.size_mib,
             "served_layers": served["served_layers"], "fallback_layers": len(served["fallback"])}
        if ref is not None:
            r["served_max_abs_diff"] = (loaded.kind.probe_output(loaded) - ref).abs().max().item()
        # the kind's protocol: batch 1, and on CUDA batch 256 too; --tiny's batch 8 apart
        s = loaded.kind.speed(loaded, size.size_bytes)
        r["images_per_s_b1"] = s["images_per_s"]
        r[f"images_per_s_b{big}"] = s.get(f"images_per_s_b{big}") or \
            loaded.kind.speed(loaded, size.size_bytes, batch=big)["images_per_s"]
        predicted = 1.0 / lat.predict(resolved)
        r.update(predicted_images_per_s=predicted,
                 predicted_error=abs(predicted - r["images_per_s_b1"]) / r["images_per_s_b1"])
        state.add("rows", r)
        log(f"vit: {plan} / {r['backend']}: b1 {r['images_per_s_b1']:.1f}/s, b{big} "
            f"{r[f'images_per_s_b{big}']:.1f}/s (predicted b1 {predicted:.1f})")

    state.run([(f"{p} / {backend}", lambda p=p, r=r: row(p, r)) for p, r in plans])
