"""Honest speed: warm up, synchronize, median of repeats.

LMs: batch-1 greedy decode tokens/s, measured as (N-1) / (t(N new tokens) -
t(1 new token)) so the prompt's prefill is not counted. ViTs: images/s.
"""

from __future__ import annotations

import statistics
import time

import torch

PROMPT = "The history of the city begins in the early medieval period, when"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.inference_mode()
def lm_decode(loaded, new_tokens: int = 32, repeats: int = 3) -> dict:
    model, device = loaded.model, loaded.device
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)
    pad = loaded.tokenizer.eos_token_id

    def gen(n):
        return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      pad_token_id=pad, attention_mask=torch.ones_like(ids))

    gen(new_tokens)()  # warm-up
    t1 = _median_seconds(gen(1), device, repeats)
    tn = _median_seconds(gen(new_tokens), device, repeats)
    return {"tokens_per_s": (new_tokens - 1) / max(tn - t1, 1e-9),
            "speed_protocol": f"batch 1, greedy, prompt {ids.shape[1]} tokens, {new_tokens} new "
                              f"tokens, median of {repeats}, {device.type}"}


def vit_input_size(model) -> tuple[int, int, int]:
    """(C, H, W) the ViT was built for."""
    if hasattr(model, "patch_embed") and hasattr(model.patch_embed, "img_size"):
        return (3, *model.patch_embed.img_size)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))


@torch.inference_mode()
def vit_images(loaded, batch: int = 1, repeats: int = 5) -> dict:
    model, device = loaded.model, loaded.device
    size = vit_input_size(model)
    x = torch.randn(batch, *size, device=device, dtype=loaded.dtype)
    model(x)  # warm-up
    t = _median_seconds(lambda: model(x), device, repeats)
    return {"images_per_s": batch / t,
            "speed_protocol": f"batch {batch}, {size[1]}x{size[2]}, median of {repeats}, "
                              f"{device.type}"}


def measure(loaded, size_bytes: int) -> dict:
    """Speed for any registered model kind, with achieved GB/s for LMs."""
    if loaded.kind == "lm":
        out = lm_decode(loaded)
        out["achieved_gb_per_s"] = size_bytes * out["tokens_per_s"] / 1e9
        return out
    return vit_images(loaded)
