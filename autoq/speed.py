"""Honest speed: warm up, synchronize, median of repeats.

LMs, batch-1 greedy decode tokens/s, by one of these engines:

- `compiled` (CUDA default): a static KV cache (transformers StaticCache) and the
  one-token decode step under torch.compile(mode="reduce-overhead"), i.e. CUDA
  graphs; the prompt's prefill runs eagerly and is not timed, only the decode
  steps are (between torch.cuda.synchronize calls).
- `static`: the same loop without torch.compile (the CUDA fallback when compiling
  fails; the fallback and its reason are reported).
- `generate` (CPU default): `model.generate`, measured as (N-1) / (t(N new tokens)
  - t(1 new token)) so the prefill is not counted.

ViTs: images/s at batch 1 (and 256 on a GPU).
"""

from __future__ import annotations

import statistics
import time

import torch

PROMPT = "The history of the city begins in the early medieval period, when"
PROMPT_TOKENS = 16  # random prompt length for models without a tokenizer


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


def prompt_ids(loaded) -> torch.Tensor:
    """The benchmark prompt as (1, T) ids (fixed random ids without a tokenizer)."""
    if loaded.tokenizer is not None:
        return loaded.tokenizer(PROMPT, return_tensors="pt").input_ids.to(loaded.device)
    g = torch.Generator().manual_seed(0)
    vocab = loaded.model.config.vocab_size
    return torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=g).to(loaded.device)


# ---- engines ------------------------------------------------------------------------
def generate_decode(loaded, new_tokens: int, repeats: int) -> float:
    """tokens/s with `model.generate` (dynamic cache, eager)."""
    model, device = loaded.model, loaded.device
    ids = prompt_ids(loaded)
    pad = loaded.tokenizer.eos_token_id if loaded.tokenizer is not None else 0

    def gen(n):
        return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      pad_token_id=pad, attention_mask=torch.ones_like(ids))

    gen(new_tokens)()  # warm-up
    t1 = _median_seconds(gen(1), device, repeats)
    tn = _median_seconds(gen(new_tokens), device, repeats)
    return (new_tokens - 1) / max(tn - t1, 1e-9)


class StaticDecoder:
    """Greedy batch-1 decode with a StaticCache; the decode step optionally compiled."""

    def __init__(self, loaded, new_tokens: int, compile: bool):
        from transformers import StaticCache

        self.model, self.device = loaded.model, loaded.device
        self.ids = prompt_ids(loaded)
        self.new_tokens = new_tokens
        self.cache = StaticCache(config=self.model.config,
                                 max_cache_len=self.ids.shape[1] + new_tokens)
        step = self._step
        if compile:
            torch._dynamo.reset()  # a new plan means new modules: compile afresh
            step = torch.compile(step, mode="reduce-overhead", fullgraph=False)
        self.step = step

    def _step(self, tok: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tok, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1:].argmax(-1)

    @torch.inference_mode()
    def run(self) -> tuple[float, torch.Tensor]:
        """(seconds for the new_tokens - 1 decode steps, all new token ids)."""
        self.cache.reset()
        out = self.model(input_ids=self.ids, past_key_values=self.cache, use_cache=True)
        tokens = [out.logits[:, -1:].argmax(-1)]
        _sync(self.device)
        t = time.perf_counter()
        for _ in range(self.new_tokens - 1):
            tokens.append(self.step(tokens[-1]).clone())  # clone: CUDA graph outputs are reused
        _sync(self.device)
        return time.perf_counter() - t, torch.cat(tokens, dim=1)


def static_decode(loaded, new_tokens: int, repeats: int, compile: bool) -> float:
    dec = StaticDecoder(loaded, new_tokens, compile)
    for _ in range(3 if compile else 1):  # compile, record the CUDA graph, replay once
        dec.run()
    seconds = statistics.median(dec.run()[0] for _ in range(repeats))
    return (new_tokens - 1) / max(seconds, 1e-9)


ENGINES = {
    "compiled": lambda loaded, n, r: static_decode(loaded, n, r, compile=True),
    "static": lambda loaded, n, r: static_decode(loaded, n, r, compile=False),
    "generate": generate_decode,
}
FALLBACK = {"compiled": "static", "static": "generate"}


def default_engine(device: torch.device) -> str:
    return "compiled" if device.type == "cuda" else "generate"


@torch.inference_mode()
def lm_decode(loaded, new_tokens: int | None = None, repeats: int | None = None,
              engine: str | None = None) -> dict:
    """tokens/s of batch-1 greedy decode; falls back compiled -> static -> generate."""
    device = loaded.device
    cuda = device.type == "cuda"
    new_tokens = new_tokens or (128 if cuda else 32)
    repeats = repeats or (5 if cuda else 3)
    engine = engine or default_engine(device)
    tried = {}
    while True:
        try:
            tps = ENGINES[engine](loaded, new_tokens, repeats)
            break
        except Exception as e:  # noqa: BLE001  (any failure: report it, use the next engine)
            if engine not in FALLBACK:
                raise
            tried[engine] = f"{e.__class__.__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            engine = FALLBACK[engine]
    out = {"tokens_per_s": tps, "speed_engine": engine,
           "speed_protocol": f"batch 1, greedy, prompt {prompt_ids(loaded).shape[1]} tokens, "
                             f"{new_tokens} new tokens, engine {engine}, median of {repeats}, "
                             f"{device.type}"}
    if tried:
        out["speed_engine_fallback"] = tried
    return out


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
    out = vit_images(loaded)
    if loaded.device.type == "cuda":
        big = vit_images(loaded, batch=256)
        out["images_per_s_b256"] = big["images_per_s"]
        out["speed_protocol"] += "; and batch 256"
    return out
