"""`LayerCache`: each (matrix, config) is quantized at most once.

Within a process a (matrix, config, device, dtype) maps to one packed layer (a tied
embedding and head are one matrix: they get one packed tensor); with a folder,
packed layers are also reused across runs, keyed by a hash of the weights, the
config, the method's own version key and torch's version, so a stale entry can
never match. A corrupt entry is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from torch import nn

from ..io import write_atomic
from . import LayerConfig
from .layers import LAYER_TYPES, Unit
from .modules import Dequantized


class LayerCache:
    def __init__(self, folder: str | os.PathLike | None = None, pack_only: bool = False):
        """`pack_only`: the method's packing without its solver (fast; for timing layers,
        whose values do not change their speed): never read from or written to `folder`."""
        self.folder = None if pack_only or not folder else Path(folder)
        self.pack_only = pack_only
        self.memory: dict[tuple, nn.Module] = {}
        self.quantized: list[tuple[str, LayerConfig]] = []  # what was really computed
        self.disk_hits = 0
        self._weight_hash: dict[tuple, str] = {}
        self._dequantized: dict[int, Dequantized] = {}

    def dequantized(self, layer: nn.Module) -> Dequantized:
        """The scoring twin of a cached packed layer (made once per layer object)."""
        if id(layer) not in self._dequantized:
            self._dequantized[id(layer)] = Dequantized(layer)
        return self._dequantized[id(layer)]

    def get(self, qm, unit: Unit, cfg: LayerConfig, device: torch.device,
            dtype: torch.dtype) -> nn.Module:
        """The packed layer of `unit`'s matrix in the quantized model `qm`."""
        key = (qm.source(unit), cfg, str(device), dtype)
        if key not in self.memory:
            self.memory[key] = self._load(qm, unit, cfg, device, dtype) \
                or self._compute(qm, unit, cfg, device, dtype)
        return self.memory[key]

    def _compute(self, qm, unit, cfg, device, dtype) -> nn.Module:
        t = LAYER_TYPES[unit.type]
        layer = cfg.quant.quantize(t.matrix(qm, unit).detach(), t.bias(qm, unit), cfg, device,
                                   dtype, transposed=t.transposed, optimize=not self.pack_only)
        self.quantized.append((unit.name, cfg))
        if self.folder is not None:
            buf = io.BytesIO()
            torch.save({k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                        for k, v in cfg.quant.state(layer).items()}, buf)
            write_atomic(self._path(qm, unit, cfg, device, dtype), buf.getvalue(), sync=False)
        return layer

    def _load(self, qm, unit, cfg, device, dtype) -> nn.Module | None:
        if self.folder is None:
            return None
        path = self._path(qm, unit, cfg, device, dtype)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            layer = cfg.quant.load(state, LAYER_TYPES[unit.type].transposed, device, dtype)
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None
        self.disk_hits += 1
        return layer

    def _path(self, qm, unit, cfg, device, dtype) -> Path:
        source = qm.source(unit)
        if source not in self._weight_hash:
            h = hashlib.sha256()
            t = LAYER_TYPES[unit.type]
            for x in (t.matrix(qm, unit), t.bias(qm, unit)):
                if x is not None:
                    h.update(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._weight_hash[source] = h.hexdigest()
        key = "|".join([self._weight_hash[source], cfg.label, str(dtype), device.type,
                        cfg.quant.cache_key(), "torch", torch.__version__.split("+")[0]])
        return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".pt")
