"""Per-layer, per-option sensitivity: the expected loss increase of quantizing one layer.

Method (Fisher-weighted quantization error): one backward pass per calibration
sample (the first few windows / images of the task data) gives the empirical
Fisher diagonal F = E[g^2] of every linear weight. For a layer quantized with an
option, with dW = W - dequantize(quantize(W)), the second-order estimate of the
loss increase is  s = 1/2 * sum(F * dW^2).  Layers add up: the predicted loss of a
plan is the fp loss plus the sum of its layers' s (times a scale fitted on the
measured uniform baselines). Every (layer, option) pair is quantized once through
the search's LayerCache, so trials reuse these layers for free.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..io import write_json
from ..quant import LayerConfig, label_of
from ..progress import track

METHOD = "fisher-diag/1"


def fisher_diagonal(ev, samples: int = 8) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the task loss w.r.t. every quantizable matrix, on the
    unquantized model (the plan applied before is applied again afterwards). A tied
    embedding and head share one parameter: its gradient sums both uses."""
    qm = ev.loaded.quantized
    model, units = qm.model, qm.units
    with qm.unquantized(device=ev.device, dtype=ev.dtype):
        params = {id(p): p for p in (qm.param(u) for u in units.values())}
        fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
        batches = ev.task.calibration(ev.dataset, samples)
        for p in params.values():
            p.requires_grad_(True)
        try:
            for batch in track(batches, "sensitivity: gradients", total=len(batches)):
                model.zero_grad(set_to_none=True)
                for p in params.values():
                    p.grad = None
                with torch.enable_grad():
                    ev.task.loss(ev.loaded, batch).backward()
                for k, p in params.items():
                    if p.grad is not None:
                        fisher[k] += p.grad.float() ** 2 / len(batches)
        finally:
            for p in params.values():
                p.requires_grad_(False)
                p.grad = None
    return {n: qm.view(u, fisher[id(qm.param(u))]) for n, u in units.items()}


@torch.inference_mode()
def layer_sensitivities(ev, layer_options: Mapping[str, Iterable[LayerConfig | None]],
                        fisher: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{layer: {option label: 1/2 sum(F * dW^2)}}; `fp` costs 0."""
    qm = ev.loaded.quantized
    out: dict[str, dict[str, float]] = {}
    pairs = [(n, o) for n, opts in layer_options.items() for o in opts]
    for name, cfg in track(pairs, "sensitivity: quantize layers", total=len(pairs)):
        row = out.setdefault(name, {})
        if cfg is None:
            row[label_of(cfg)] = 0.0
            continue
        w = qm.matrix(qm.units[name]).float()
        q = ev.cache.get(qm, qm.units[name], cfg, ev.device, ev.dtype)
        dw = w - cfg.quant.dequantize(q).float().reshape(w.shape)
        row[label_of(cfg)] = 0.5 * float((fisher[name].to(dw.device) * dw * dw).sum())
    return out


def cache_key(ev, layer_options: Mapping[str, Iterable[LayerConfig | None]], samples: int) -> str:
    """Changes whenever the model, the task data, the options or the method change."""
    h = hashlib.sha256()
    h.update(json.dumps([METHOD, ev.settings.model, ev.settings.checkpoint, ev.task.name,
                         ev.protocol, str(ev.dtype), samples]).encode())
    for batch in ev.task.calibration(ev.dataset, samples):
        for t in batch:
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for name in sorted(layer_options):
        h.update(name.encode())
        h.update(",".join(sorted(label_of(o) for o in layer_options[name])).encode())
    return h.hexdigest()[:20]


def measure_or_load(ev, layer_options: Mapping[str, Iterable[LayerConfig | None]],
                    folder: Path, samples: int = 8) -> dict:
    """Sensitivities for these layers/options, computed once per (model, data, options)."""
    layer_options = {n: list(o) for n, o in layer_options.items()}
    path = Path(folder) / f"sensitivity-{cache_key(ev, layer_options, samples)}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # a damaged cache entry is recomputed
    t = time.perf_counter()
    fisher = fisher_diagonal(ev, samples)
    layers = layer_sensitivities(ev, layer_options, fisher)
    result = {"method": METHOD, "samples": samples, "protocol": ev.protocol,
              "model": ev.settings.model, "seconds": time.perf_counter() - t, "layers": layers}
    write_json(path, result)
    return result
