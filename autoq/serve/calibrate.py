"""On a CPU, layers are timed where they run: inside the model's own decode.

A layer timed alone keeps its weights in the CPU's caches; in a decode step every
layer's weights stream from memory while the rest of the model evicts them, and it
measured 1.4-4.3x slower there (SmolLM2 on this project's 2-core machine: a 576x576
4-bit layer 23 us alone, 42 us in the decode; fp32 16 us and 68 us). So for each
option, every priced layer it fits is packed at it (the method's packing without its
solver: the same kernels, fast; values do not change a layer's speed), served by the
backend, and the speed engine decodes twice: once plain (that option's decode time),
once with forward hooks that time every call of every priced module.

    timed = in_model(loaded, [None, q4, q8], "torch-int4", speed_kwargs)
    timed["4:64"].layers["model.layers.0.mlp.up_proj"]   # median seconds of one call
    timed["4:64"].decode                                 # seconds per token, no hooks

Priced units that are not modules of their own (MoE experts inside a 3-D parameter)
have no hook: they are not in `layers`. The model is left with the plan it had,
served as before.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch

from ..quant import LayerConfig, label_of
from ..quant.cache import LayerCache
from .backend import prepare_


@dataclass
class Timed:
    decode: float               # seconds per token (image) of the plain decode
    layers: dict[str, float]    # priced module -> median seconds of one decode call


def uniform(shapes: Mapping[str, tuple[int, int]], cfg: LayerConfig | None) -> dict:
    """Every layer `cfg` fits at `cfg`, the others unquantized."""
    return {n: (None if cfg is None or cfg.problem(*s) else cfg) for n, s in shapes.items()}


def in_model(loaded, configs: Iterable[LayerConfig | None], backend: str,
             speed_kwargs: Mapping, hooks: bool = True,
             progress: Callable[[str], None] | None = None) -> dict[str, Timed]:
    """Option label ("fp" for none) -> its decode time and (`hooks`) its priced modules'
    times."""
    qm, device, dtype = loaded.quantized, loaded.device, loaded.dtype
    shapes, serving = qm.shapes(), qm.serving
    packing = LayerCache(pack_only=True)
    out = {}
    try:
        with qm.unquantized(device=device, dtype=dtype):
            for cfg in configs:
                if progress:
                    progress(f"timing {label_of(cfg)} inside the model's decode")
                qm.apply(uniform(shapes, cfg), device=device, dtype=dtype, cache=packing)
                prepare_(qm, backend)
                with torch.inference_mode():
                    decode = loaded.kind.seconds(loaded, **speed_kwargs)
                    layers = _hooked(loaded, shapes, speed_kwargs) if hooks else {}
                out[label_of(cfg)] = Timed(decode, layers)
                packing.memory.clear()
    finally:  # the plan is back (unquantized()); serve it as it was served
        if serving is not None:
            prepare_(qm, backend)
        qm.serving = serving
    return out


def _hooked(loaded, shapes: Mapping[str, tuple[int, int]], speed_kwargs: Mapping
            ) -> dict[str, float]:
    """One more decode, each priced module's calls timed by forward hooks; a module's
    time is the median of its calls of its most frequent input shape (a decode step's,
    not the prefill's: the decode makes many more calls)."""
    calls: dict[str, list[tuple[tuple, float]]] = {}
    handles = []
    for name in shapes:
        try:
            module = loaded.model.get_submodule(name)
        except AttributeError:
            continue  # an expert inside a 3-D parameter: no module of its own
        start: list = []
        times = calls.setdefault(name, [])

        def pre(_m, args, start=start):
            x = args[0] if args else None
            start[:] = [tuple(x.shape), time.perf_counter()] if isinstance(x, torch.Tensor) \
                else []

        def post(_m, _args, _out, start=start, times=times):
            if start:
                times.append((start[0], time.perf_counter() - start[1]))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    short = {"repeats": 1}  # one short timed run: a layer's time does not depend on the
    if loaded.kind.unit == "token":  # position (the rest does: the plain decode times it)
        short["new_tokens"] = min(16, speed_kwargs.get("new_tokens") or 16)
    try:
        loaded.kind.seconds(loaded, **{**speed_kwargs, **short})
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, timed in calls.items():
        if timed:
            shape = Counter(s for s, _ in timed).most_common(1)[0][0]
            out[name] = statistics.median(t for s, t in timed if s == shape)
    return out
