"""Latency model: predict a plan's decode time without decoding.

    seconds per token = rest + sum over priced layers of t(shape, option, served by)

`t` is the time of one forward at the model's serving shape: (1, 1, in_features) for
an LM decode step, (1, tokens, in_features) for a ViT image. Each distinct (shape,
option, backend) is measured once per device and cached in a JSON file (one per
device name, dtype, backend, torch/hqq/gemlite versions) under `<cache_dir>/latency/`.

- On a GPU each LM timing is a CUDA graph of back-to-back forwards (compiled too when
  the decode engine is `compiled`) cycling through enough copies of the layer to
  overflow L2 (every layer's weights come from HBM in a decode step); ViT timings are
  eager. `rest` (attention, norms, sampling) is the fp model's decode time less its
  layers' timings.
- On a CPU layers are timed inside the model's own decode, one run per option with
  every layer it fits at it (autoq.serve.calibrate): alone, a layer's weights stay in
  cache and it ran 1.4-4.3x faster than in the decode. Each option has its own `rest`
  (its decode less its layers: the streaming weights slow the rest too); a mixed plan's
  rest is their average weighted by the plan's weights at each option.

    lat = LatencyModel.for_model(loaded, options, "gemlite", cache_dir)
    lat.predict(resolved)         # seconds per token (per image for ViTs)
    lat.tokens_per_s(resolved)
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ..io import write_json
from ..quant import METHODS, LayerConfig, label_of
from . import BACKENDS, calibrate, require_backend
from .backend import served_by

FORMAT = "autoq.latency/3"
MATMUL, LOOKUP = "matmul", "lookup"
CPU_BUDGET_S = 0.02     # per (shape, option): stop repeating after this much time ...
MIN_REPEATS = 3         # ... but time at least this many forwards
MAX_REPEATS = 50
GPU_CALLS = 64          # forwards per CUDA graph
GPU_ROUNDS = 5          # graph replays (median)
MAX_COPIES = 32         # layer copies cycled through to defeat L2


def layer_key(fin: int, fout: int, cfg: LayerConfig | None, served: str,
              lead: tuple[int, ...], mode: str = "eager", op: str = MATMUL) -> str:
    """Table key: shape, option ("fp" for none), serving kernels, input leading dims,
    timing mode (and, for a lookup, "lookup:" first)."""
    key = f"{fin}x{fout}|{label_of(cfg)}|{served}|{'x'.join(map(str, lead))}|{mode}"
    return key if op == MATMUL else f"{op}:{key}"


def pricing(loaded) -> dict[str, tuple[str, float]]:
    """Layer name -> (operation, share of the steps it runs in): a linear is a matmul
    every step; an embedding is a lookup (one row per decoded token, not a matmul); an
    expert runs in top_k of its experts' count of the steps (batch-1 decode)."""
    units = loaded.units()
    experts: dict[str, int] = {}
    for u in units.values():
        if u.type == "expert":
            experts[f"{u.module}.{u.param}"] = experts.get(f"{u.module}.{u.param}", 0) + 1
    top_k = getattr(getattr(loaded.model, "config", None), "num_experts_per_tok", 1) or 1
    out = {}
    for name, u in units.items():
        if u.type == "embedding":
            out[name] = (LOOKUP, 1.0)
        elif u.type == "expert":
            out[name] = (MATMUL, min(1.0, top_k / experts[f"{u.module}.{u.param}"]))
        else:
            out[name] = (MATMUL, 1.0)
    return out


@dataclass
class LatencyModel:
    layer_seconds: dict[str, float]          # layer_key -> seconds of one forward
    rest: dict[str, float]                   # option label -> everything but the layers
    shapes: dict[str, tuple[int, int]]       # name -> (in_features, out_features)
    backend: str = "hqq"
    lead: tuple[int, ...] = (1, 1)           # leading input dims of a linear forward
    mode: str = "eager"                      # how layers were timed (see timing_mode)
    unit: str = "token"                      # what one predicted time produces
    info: dict = field(default_factory=dict)  # device, cache file, measured fp time
    ops: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (op, share)

    # ---- pure arithmetic ---------------------------------------------------------
    def layer_time(self, name: str, cfg: LayerConfig | None,
                   shapes: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Seconds one layer adds per token (image): its operation's timing times the
        share of the steps it runs in."""
        fin, fout = (shapes or self.shapes)[name]
        op, share = self.ops.get(name, (MATMUL, 1.0))
        served = served_by(cfg, fin, fout, self.backend) if op == MATMUL else \
            ("fp" if cfg is None else "hqq")
        key = layer_key(fin, fout, cfg, served, self.lead if op == MATMUL else (1,), self.mode,
                        op)
        if key not in self.layer_seconds:
            raise KeyError(f"no latency measured for {name} ({key}); pass that option to "
                           "LatencyModel.for_model(options=...)")
        return share * self.layer_seconds[key]

    def rest_share(self, name: str, cfg: LayerConfig | None,
                   shapes: Mapping[str, tuple[int, int]] | None = None) -> float:
        """`name`'s part of the rest term at `cfg`: each option's rest spread over the layers
        by their weights (a plan's rest: its options' rests weighted by its weights)."""
        shapes = shapes or self.shapes
        rest = next(iter(self.rest.values())) if len(self.rest) == 1 else \
            self.rest.get(label_of(cfg))
        if rest is None:
            raise KeyError(f"no rest term measured for {label_of(cfg)}; pass that option to "
                           "LatencyModel.for_model(options=...)")
        w = {n: f * o * self.ops.get(n, (MATMUL, 1.0))[1] for n, (f, o) in shapes.items()}
        return rest * w[name] / sum(w.values())

    def rest_time(self, resolved: Mapping[str, LayerConfig | None],
                  shapes: Mapping[str, tuple[int, int]] | None = None) -> float:
        return sum(self.rest_share(n, resolved.get(n), shapes) for n in (shapes or self.shapes))

    def predict(self, resolved: Mapping[str, LayerConfig | None],
                shapes: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Seconds per token (per image): rest + every priced layer at its option
        (a layer missing from `resolved` is unquantized)."""
        shapes = shapes or self.shapes
        return self.rest_time(resolved, shapes) + sum(
            self.layer_time(n, resolved.get(n), shapes) for n in shapes)

    def tokens_per_s(self, resolved: Mapping[str, LayerConfig | None],
                     shapes: Mapping[str, tuple[int, int]] | None = None) -> float:
        return 1.0 / self.predict(resolved, shapes)

    def to_json(self) -> dict:
        return {"backend": self.backend, "lead": list(self.lead), "mode": self.mode,
                "unit": self.unit,
                "rest_seconds": dict(self.rest), "layers": dict(self.layer_seconds),
                **self.info}

    # ---- measured ----------------------------------------------------------------
    @classmethod
    def for_model(cls, loaded, options: Iterable[LayerConfig | None], backend: str = "hqq",
                  cache_dir: str | Path | None = None,
                  progress: Callable[[str], None] | None = None,
                  speed_kwargs: Mapping | None = None,
                  only: Mapping[str, LayerConfig | None] | None = None) -> "LatencyModel":
        """Measure (or read from the cache) every (shape, option) the search may use, and
        the rest term (`speed_kwargs`: autoq.speed's protocol, e.g. {"new_tokens": 8}); the
        model keeps its plan. `only` (a resolved plan): just the pairs it uses (and fp)."""
        speed_kwargs = dict(speed_kwargs or {})
        device, dtype = loaded.device, loaded.dtype
        backend = require_backend(backend, device)
        shapes, ops = loaded.shapes(), pricing(loaded)
        lead, mode = loaded.kind.serving_lead(loaded), timing_mode(loaded, speed_kwargs)
        model_key = _model_key(loaded, shapes, speed_kwargs)
        in_model = mode == "in-model"
        if in_model:  # the timings belong to this model's decode
            mode = "in-model:" + hashlib.sha256(model_key.encode()).hexdigest()[:12]
        cache = TableCache(cache_dir, device, dtype, backend)
        used = None if only is None else {c for c in only.values() if c is not None}
        configs = [None] + sorted({c for c in options if used is None or c in used},
                                  key=lambda c: (c.nbits, c.group_size or 0, c.label))
        todo: dict[str, tuple] = {}   # layer_key -> (fin, fout, cfg, served, op)
        for (fin, fout), op in sorted({(shapes[n], ops[n][0]) for n in shapes}):
            for cfg in configs:
                if cfg is not None and cfg.problem(fin, fout):
                    continue  # HQQ cannot quantize this shape with cfg: never planned
                if cfg is not None and only is not None and not in_model and not any(
                        shapes[n] == (fin, fout) and c == cfg for n, c in only.items()):
                    continue  # (in the model, its decode runs time every shape at cfg)
                served = served_by(cfg, fin, fout, backend) if op == MATMUL else \
                    ("fp" if cfg is None else "hqq")
                key = layer_key(fin, fout, cfg, served, lead if op == MATMUL else (1,), mode, op)
                todo[key] = (fin, fout, cfg, served, op)
        rested = configs if in_model else [None]  # a GPU: the fp decode only
        runs = [c for c in rested if f"{model_key}|{label_of(c)}" not in cache.rest or any(
            k not in cache.layers for k, t in todo.items() if in_model and t[2] == c)]
        timed = calibrate.in_model(loaded, runs, backend, speed_kwargs, in_model,
                                   progress) if runs else {}
        for key, (fin, fout, cfg, served, op) in todo.items():
            run = timed[label_of(cfg)].layers if label_of(cfg) in timed else {}
            inside = [t for n, t in run.items() if shapes[n] == (fin, fout) and ops[n][0] == op]
            if inside:
                cache.layers[key] = statistics.fmean(inside)
            elif key not in cache.layers:  # a GPU, or no module to hook (MoE experts)
                if progress:
                    progress(key)
                cache.layers[key] = bench_layer(fin, fout, cfg, served, device, dtype, lead,
                                                mode) if op == MATMUL else \
                    bench_lookup(fin, fout, cfg, device, dtype, mode)
        lat = cls({k: cache.layers[k] for k in todo}, {}, dict(shapes), backend, lead, mode,
                  loaded.kind.unit, ops=ops)
        for cfg in rested:  # what the decode took beyond its layers
            key = f"{model_key}|{label_of(cfg)}"
            if label_of(cfg) in timed:
                plan = calibrate.uniform(shapes, cfg)
                cache.rest[key] = max(0.0, timed[label_of(cfg)].decode - sum(
                    lat.layer_time(n, plan[n]) for n in shapes))
            lat.rest[label_of(cfg)] = cache.rest[key]
        cache.save()
        lat.info = {"device": cache.device_name, "cache_file": str(cache.path or ""),
                    "rest_seconds": dict(lat.rest)}
        return lat


# ---- micro-benchmarks ---------------------------------------------------------------
def timing_mode(loaded, speed_kwargs: Mapping | None = None) -> str:
    """How to time a layer so it matches how the speed engine runs the model:
    "in-model" (CPU: inside its decode), "stream" (eager CUDA launches), "graph" (CUDA
    graph of eager forwards), "compiled" (CUDA graph of torch.compile'd forwards)."""
    if loaded.device.type != "cuda":
        return "in-model"
    engine = loaded.kind.engine(loaded, speed_kwargs)
    return {"compiled": "compiled", "graphs": "graph"}.get(engine, "stream")


def timing_layer(fin: int, fout: int, cfg: LayerConfig | None, served: str,
                 device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A random layer of that shape as served (weights' values do not change speed;
    quantized without the method's solver: the same packing, fast)."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(fin, fout, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(fout, fin, generator=g) * fin ** -0.5)
    linear = linear.to(device=device, dtype=dtype).requires_grad_(False)
    if cfg is None:
        return linear
    layer = cfg.quant.quantize(linear.weight.data, None, cfg, device, dtype, optimize=False)
    convert = BACKENDS.get(served).convert
    return convert(layer) if convert else layer


def layer_bytes(fin: int, fout: int, cfg: LayerConfig | None, dtype: torch.dtype) -> float:
    if cfg is None:
        return fin * fout * torch.tensor([], dtype=dtype).element_size()
    return fin * fout * cfg.bits_per_weight(fin) / 8


@torch.inference_mode()
def bench_layer(fin: int, fout: int, cfg: LayerConfig | None, served: str,
                device: torch.device, dtype: torch.dtype, lead: tuple[int, ...] = (1, 1),
                mode: str = "eager") -> float:
    """Seconds of one forward of an (out, in) layer as served, input (*lead, in), timed
    in `mode` (see timing_mode): on a GPU the median of 5 rounds, on a CPU the best of
    at least 3 calls."""
    x = torch.randn(*lead, fin, device=device, dtype=dtype)
    if device.type != "cuda":  # the CPU decode engine is eager
        return _eager_seconds([timing_layer(fin, fout, cfg, served, device, dtype)], x, device)
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    copies = max(1, min(MAX_COPIES, math.ceil(2 * l2 / layer_bytes(fin, fout, cfg, dtype))))
    layers = [timing_layer(fin, fout, cfg, served, device, dtype, seed=i) for i in range(copies)]
    if mode == "stream":
        return _stream_seconds(layers, x)
    forward = _call
    if mode == "compiled" and served == "hqq":  # the engine compiles HQQ's dequantize + matmul
        torch._dynamo.reset()  # one compile per pair (copies share it), never the recompile limit
        forward = torch.compile(_call)
    try:
        return _cuda_graph_seconds(layers, x, forward)
    except Exception:  # noqa: BLE001  (not capturable: time it eagerly)
        torch.cuda.synchronize(device)
        return _eager_seconds(layers, x, device, forward)


@torch.inference_mode()
def bench_lookup(hidden: int, vocab: int, cfg: LayerConfig | None, device: torch.device,
                 dtype: torch.dtype, mode: str = "eager") -> float:
    """Seconds of one token's embedding lookup in a (vocab, hidden) table: a gather of one
    row, dequantizing only that row when the table is quantized."""
    from ..quant.modules import lookup

    emb = nn.Embedding(vocab, hidden, device=device, dtype=dtype)
    layer = emb if cfg is None else lookup(emb, timing_layer(hidden, vocab, cfg, "hqq", device,
                                                             dtype))
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    if device.type != "cuda" or mode in ("eager", "stream"):
        return _eager_seconds([layer], ids, device)
    try:
        return _cuda_graph_seconds([layer], ids)
    except Exception:  # noqa: BLE001  (not capturable: time it eagerly)
        torch.cuda.synchronize(device)
        return _eager_seconds([layer], ids, device)


def _call(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


def _eager_seconds(layers: list[nn.Module], x: torch.Tensor, device: torch.device,
                   forward=_call) -> float:
    for layer in layers:
        forward(layer, x)  # warm-up (and kernel autotuning)
    times, spent, i = [], 0.0, 0
    while len(times) < MAX_REPEATS and (len(times) < MIN_REPEATS or spent < CPU_BUDGET_S):
        layer = layers[i % len(layers)]
        i += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        forward(layer, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)  # best of n: robust to other processes taking the CPU


def _stream_seconds(layers: list[nn.Module], x: torch.Tensor) -> float:
    for layer in layers:
        layer(x)
    rounds = []
    for _ in range(GPU_ROUNDS):
        torch.cuda.synchronize(x.device)
        t = time.perf_counter()
        for i in range(GPU_CALLS):
            layers[i % len(layers)](x)
        torch.cuda.synchronize(x.device)
        rounds.append((time.perf_counter() - t) / GPU_CALLS)
    return statistics.median(rounds)


def _cuda_graph_seconds(layers: list[nn.Module], x: torch.Tensor, forward=_call) -> float:
    from .speed import capture

    for layer in layers:
        forward(layer, x)  # warm-up: every copy once (kernel autotuning, compiling)
    graph, _ = capture(lambda: [forward(layers[i % len(layers)], x) for i in range(GPU_CALLS)],
                       x.device)
    graph.replay()
    rounds = []
    for _ in range(GPU_ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        rounds.append(start.elapsed_time(end) / 1e3 / GPU_CALLS)
    return statistics.median(rounds)


# ---- the per-device cache file -------------------------------------------------------
def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads"


def _model_key(loaded, shapes: Mapping[str, tuple[int, int]], speed_kwargs: Mapping) -> str:
    arch = json.dumps(sorted(shapes.items())) + str(getattr(loaded.model, "config", ""))
    engine = loaded.kind.engine(loaded)
    protocol = ",".join(f"{k}={v}" for k, v in sorted(speed_kwargs.items()))
    return (f"{loaded.spec}|{loaded.kind.name}|{engine}|{protocol}|"
            + hashlib.sha256(arch.encode()).hexdigest()[:16])


class TableCache:
    """{layer_key: seconds} and {model_key: fp seconds} for one device/dtype/backend."""

    def __init__(self, cache_dir, device: torch.device, dtype: torch.dtype, backend: str):
        self.device_name = device_name(device)
        self.key = {"format": FORMAT, "device": self.device_name,
                    "dtype": str(dtype).removeprefix("torch."), "backend": backend,
                    "torch": torch.__version__,
                    **{m: METHODS.get(m).version() for m in METHODS},
                    "gemlite": package_version("gemlite") if backend == "gemlite" else "unused"}
        self.path = None
        self.layers: dict[str, float] = {}
        self.rest: dict[str, float] = {}
        if cache_dir is None:
            return
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:12]
        slug = "".join(c if c.isalnum() else "-" for c in self.device_name).strip("-")[:40]
        self.path = Path(cache_dir) / "latency" / f"{slug}-{digest}.json"
        try:
            data = json.loads(self.path.read_text())
            if data.get("key") == self.key:
                self.layers = {k: float(v) for k, v in data["layers"].items()}
                self.rest = {k: float(v) for k, v in data["rest"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cache yet, or a broken one: measure again and rewrite it

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, {"key": self.key, "layers": self.layers, "rest": self.rest})
