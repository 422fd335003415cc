"""Batch-1 text generation from a loaded LM, streamed, with honest timing.

`generate(loaded, prompt, ...)` runs a decode loop (a static KV cache, eager or with a
compiled step: autoq.serve.speed.StaticDecoder; or transformers' `model.generate`) with
a streamer that hands each piece of text to `on_text` as its tokens arrive and stamps
the time of every new token. The prompt's prefill (and the first new token it yields) is timed apart
from the decode: decode tokens/s = (new tokens - 1) / (time of the last token -
time of the first), so it is the speed of the one-token steps alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0    # 0: greedy
    top_p: float = 1.0
    seed: int = 0

    def kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def prompt_ids(tokenizer, prompt: str, chat_template: bool) -> tuple[torch.Tensor, bool]:
    """(1, T) input ids, and whether the tokenizer's chat template was used (only when
    asked and the tokenizer has one)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        return ids, True
    return tokenizer(prompt, return_tensors="pt").input_ids, False


class _Streamer:
    """transformers' streamer protocol (`put` the prompt, then each new token; `end`):
    decodes the new tokens so far and passes on only the text not yet passed on,
    holding back a trailing partial character."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.prompt_seen, self.tokens, self.times, self.shown = False, [], [], ""

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.tokens.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self._show(text)

    def end(self) -> None:
        self._show(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _show(self, text: str) -> None:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.on_text(text[len(self.shown):])
            self.shown = text


def pick_engine(engine: str, device: torch.device) -> str:
    """auto: a static KV cache, eager, on a CPU (compiling the step costs ~40 s on 2 cores
    for ~30% less time per token: it pays off only over thousands of tokens, so it is
    asked for with `compiled`); transformers' own `generate` on a GPU."""
    if engine != "auto":
        return engine
    return "static" if device.type == "cpu" else "generate"


def sampler(s: Sampling) -> Callable[[torch.Tensor], torch.Tensor]:
    """Last-position logits (1, 1, vocab) -> the next token (1, 1): greedy, or sampled at
    `temperature` from the smallest set of tokens holding `top_p` of the probability."""
    if s.temperature == 0:
        return lambda logits: logits.argmax(-1)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits[:, -1].float() / s.temperature, dim=-1)
        if s.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > s.top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        return torch.multinomial(probs, 1)
    return pick


def _eos_ids(loaded) -> set[int]:
    ids = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, (list, tuple)) else [ids]
    return {i for i in [*ids, loaded.tokenizer.eos_token_id] if i is not None}


@torch.inference_mode()
def generate(loaded, prompt: str, sampling: Sampling = Sampling(), chat_template: bool = True,
             on_text: Callable[[str], None] = lambda text: None, engine: str = "auto") -> dict:
    """Generate from `prompt` (batch 1), streaming the text to `on_text`; the text, its
    timing and the engine that ran (`pick_engine`)."""
    from .speed import StaticDecoder

    tok, model = loaded.tokenizer, loaded.model
    ids, templated = prompt_ids(tok, prompt, chat_template)
    ids = ids.to(loaded.device)
    streamer = _Streamer(tok, on_text)
    torch.manual_seed(sampling.seed)
    engine = pick_engine(engine, loaded.device)
    start = time.perf_counter()
    if engine == "generate":
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.generate(ids, attention_mask=torch.ones_like(ids),  # calls streamer.end() last
                       max_new_tokens=sampling.max_new_tokens, pad_token_id=pad,
                       streamer=streamer, **sampling.kwargs())
    else:
        eos = _eos_ids(loaded)
        dec = StaticDecoder(loaded, sampling.max_new_tokens,
                            "compiled" if engine == "compiled" else "eager", ids, sampler(sampling))
        streamer.put(ids)  # the prompt, as transformers' generate hands it over first
        dec.run(lambda t: streamer.put(t) or int(t) in eos)
        streamer.end()
    times, n = streamer.times, len(streamer.tokens)
    decode_s = times[-1] - times[0] if n > 1 else 0.0
    return {"prompt": prompt, "chat_template": templated, "text": streamer.shown,
            "prompt_tokens": ids.shape[1], "new_tokens": n,
            "prefill_s": (times[0] - start) if times else 0.0,
            "decode_s": decode_s,
            "decode_tokens_per_s": (n - 1) / decode_s if decode_s > 0 else None,
            "sampling": "greedy" if sampling.temperature == 0 else
            f"temperature {sampling.temperature:g}, top-p {sampling.top_p:g}, seed {sampling.seed}",
            "engine": {"generate": "transformers generate (dynamic cache)",
                       "static": "static KV cache, eager",
                       "compiled": "static KV cache, torch.compile'd step"}[engine],
            "device": loaded.device.type}
