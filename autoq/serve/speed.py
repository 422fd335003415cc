"""Honest speed: warm up, synchronize, median of repeats.

LMs, batch-1 greedy decode tokens/s, by one of these engines (all but `generate`
use a static KV cache, transformers' StaticCache, run the prompt's prefill
eagerly and time only the decode steps, between torch.cuda.synchronize calls):

- `graphs` (CUDA default): the one-token decode step captured once as a CUDA graph
  and replayed (no per-kernel launch cost, no compile time).
- `compiled`: the decode step under torch.compile (mode="reduce-overhead" on a GPU,
  i.e. fused kernels + CUDA graphs; about a minute of compiling per plan on a 1B model;
  the default mode on a CPU, ~40 s for SmolLM2 on 2 cores).
- `static` (CPU default): the same loop, eager.
- `generate`: `model.generate`, measured as (N-1) / (t(N new tokens) - t(1 new
  token)) so the prefill is not counted.

An engine that fails falls back along compiled -> graphs -> static -> generate; the
engine used and the reason for any fallback are reported. ViTs: images/s at batch
1 (and 256 on a GPU), eager.
"""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

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


def capture(fn: Callable[[], T], device: torch.device | None = None,
            warmup: int = 1) -> tuple["torch.cuda.CUDAGraph", T]:
    """`fn` recorded as a CUDA graph, after `warmup` runs on a side stream (lazy init,
    kernel autotuning), as graph capture wants; returns the graph and fn's output
    tensors (overwritten by every replay). Recording runs nothing."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


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

    gen(min(new_tokens, 4))()  # warm-up: prefill and decode steps (caches, lazy inits)
    t1 = _median_seconds(gen(1), device, repeats)
    tn = _median_seconds(gen(new_tokens), device, repeats)
    return (new_tokens - 1) / max(tn - t1, 1e-9)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


class StaticDecoder:
    """Batch-1 decode with a StaticCache (greedy, or any `pick`: last logits -> token);
    `mode` runs the decode step "eager", "compiled" (torch.compile; reduce-overhead, i.e.
    CUDA graphs, on a GPU) or as a captured CUDA "graph"."""

    def __init__(self, loaded, new_tokens: int, mode: str = "eager",
                 ids: torch.Tensor | None = None,
                 pick: Callable[[torch.Tensor], torch.Tensor] = greedy):
        from transformers import StaticCache

        self.model, self.device = loaded.model, loaded.device
        self.ids = prompt_ids(loaded) if ids is None else ids.to(loaded.device)
        self.new_tokens, self.pick = new_tokens, pick
        self.cache = StaticCache(config=self.model.config,
                                 max_cache_len=self.ids.shape[1] + new_tokens)
        self.pos = torch.zeros(1, 1, dtype=torch.long, device=self.device)  # next position
        self.cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"   # transformers renamed it in 5.x
        self.mode = mode
        self.step = self._step
        if mode == "compiled":
            torch._dynamo.reset()  # a new plan means new modules: compile afresh
            self.step = torch.compile(self._step, fullgraph=False, dynamic=False,
                                      mode="reduce-overhead" if self.device.type == "cuda"
                                      else None)
        self.graph = None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self.cache_kw: self.cache})
        return self.pick(out.logits[:, -1:])

    def _step(self, tok: torch.Tensor) -> torch.Tensor:
        """One decode step; its position is a device tensor, advanced in place (a captured
        or compiled step reads nothing back to the host)."""
        nxt = self._forward(tok, self.pos)
        self.pos.add_(1)
        return nxt

    def _capture(self, tok: torch.Tensor) -> None:
        """Record one decode step (it reads and advances its position on the device)."""
        self.tok_in = tok.clone()
        self.graph, self.tok_out = capture(lambda: self._step(self.tok_in), self.device)

    def _replay(self, tok: torch.Tensor) -> torch.Tensor:
        self.tok_in.copy_(tok)
        self.graph.replay()
        return self.tok_out

    def _prefill(self) -> torch.Tensor:
        self.cache.reset()  # in place: a captured graph keeps pointing at the same tensors
        n = self.ids.shape[1]
        first = self._forward(self.ids, torch.arange(n, device=self.device)[None])
        self.pos.fill_(n)
        return first

    @torch.inference_mode()
    def run(self, on_token: Callable[[torch.Tensor], bool] | None = None
            ) -> tuple[float, torch.Tensor]:
        """(seconds for the decode steps after the first new token, all new token ids).
        `on_token(token)` sees each new token as it comes; True stops there."""
        if self.mode == "graph" and self.graph is None:
            self._capture(self._prefill())
            self.step = self._replay
        tokens = [self._prefill()]
        _sync(self.device)
        t = time.perf_counter()
        if on_token is None or not on_token(tokens[0]):
            for _ in range(self.new_tokens - 1):
                tokens.append(self.step(tokens[-1]).clone())  # clone: graph outputs are reused
                if on_token is not None and on_token(tokens[-1]):
                    break
        _sync(self.device)
        return time.perf_counter() - t, torch.cat(tokens, dim=1)


def static_decode(loaded, new_tokens: int, repeats: int, mode: str) -> float:
    dec = StaticDecoder(loaded, new_tokens, mode)
    for _ in range(3 if mode == "compiled" else 1):  # compile, record, replay once
        dec.run()
    seconds = statistics.median(dec.run()[0] for _ in range(repeats))
    return (new_tokens - 1) / max(seconds, 1e-9)


ENGINES = {
    "compiled": lambda loaded, n, r: static_decode(loaded, n, r, "compiled"),
    "graphs": lambda loaded, n, r: static_decode(loaded, n, r, "graph"),
    "static": lambda loaded, n, r: static_decode(loaded, n, r, "eager"),
    "generate": generate_decode,
}
FALLBACK = {"compiled": "graphs", "graphs": "static", "static": "generate"}


def default_engine(device: torch.device) -> str:
    return "graphs" if device.type == "cuda" else "static"


@torch.inference_mode()
def lm_decode(loaded, new_tokens: int | None = None, repeats: int | None = None,
              engine: str | None = None) -> dict:
    """tokens/s of batch-1 greedy decode (engine: see ENGINES; None = the device's
    default), falling back along FALLBACK when an engine fails."""
    device = loaded.device
    cuda = device.type == "cuda"
    # on a CPU the protocol is shorter (32 tokens, median of 3): torch-int4 decodes
    # SmolLM2 at ~10-20 ms per token, but HQQ's own torch forward dequantizes every layer
    # at every step (~0.1-0.3 s per token)
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
            first = str(e).splitlines()[0][:200] if str(e) else ""
            tried[engine] = f"{e.__class__.__name__}: {first}"
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
