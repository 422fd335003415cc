"""HQQ (half-quadratic quantization, calibration-free), the registered method `hqq`.

A layer's matrix is quantized along in_features (axis=1, what gemlite serves) in groups
of `group_size` with a 16-bit scale and zero each: w = (q - zero) * scale. HQQ packs
the codes of 8/4/2/1 bits into uint8 (1.58-bit packs as 2-bit) and 3-bit ten to an
int32. The packed layer is hqq's HQQLinear (autoq/quant/hqq_layers.py, which imports
hqq); this module's rules import nothing heavy, so the CLI checks configs with them.

Forms its packed tensors take (what autoq.serve's kernels can be fed):
- "hqq": the HQQLinear itself (gemlite's `from_hqqlinear`);
- "affine": unpacked integer codes with a scale and zero per group (`affine`), for
  kernels that compute (q - zero) * scale themselves (torch's int4 CPU kernel, GGUF).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Mapping

from ..errors import UserError
from . import Affine, LayerConfig

NAME = "hqq"
NBITS = (1, 1.58, 2, 3, 4, 8)
PACK_FACTOR = {1: 8, 1.58: 4, 2: 4, 3: 1, 4: 2, 8: 1}  # values per packed byte (3-bit pads)
STORED_BITS = {1: 1, 1.58: 2, 2: 2, 3: 3.2, 4: 4, 8: 8}  # 1.58 packs as 2-bit; 3-bit: 10 per int32
KEYS = ("nbits", "group_size")
LOADER = "hqq.models.hf.base.AutoHQQHFModel.from_quantized"   # hqq's own loader
META_BITS = 32   # a 16-bit scale and a 16-bit zero per group


class HQQ:
    name = NAME
    NBITS = NBITS
    forms = ("hqq", "affine")

    # ---- rules (pure) ---------------------------------------------------------------
    def version(self) -> str:
        try:
            return version("hqq")
        except PackageNotFoundError:
            return "none"

    def parse(self, value: Mapping, where: str) -> LayerConfig:
        """A plan's layer entry {"nbits", "group_size"} checked: one sentence per mistake."""
        unknown = sorted(map(str, set(value) - set(KEYS) - {"method"}))
        if unknown:
            raise UserError(f"{where} has unknown key {unknown[0]!r}; only nbits and group_size "
                            "are allowed.")
        for key in KEYS:
            if key not in value:
                raise UserError(f"{where} is missing {key!r}; add it (group_size may be null).")
        nbits, gs = value["nbits"], value["group_size"]
        if isinstance(nbits, bool) or not isinstance(nbits, (int, float)) or nbits not in NBITS:
            raise UserError(f"{where}.nbits={nbits!r} is not one of HQQ's {list(NBITS)}; "
                            "pick one of those.")
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs <= 0
                               or gs % 8):
            raise UserError(f"{where}.group_size={gs!r} must be a positive multiple of 8 or "
                            "null; fix it.")
        return LayerConfig.from_json({"nbits": nbits, "group_size": gs}, NAME)

    def problem(self, cfg: LayerConfig, in_features: int, out_features: int) -> str | None:
        """Why `cfg` cannot quantize an (out, in) weight, or None if it can."""
        if cfg.nbits not in NBITS:
            return f"nbits={cfg.nbits!r} is not one of HQQ's {list(NBITS)}"
        gs = cfg.group_size
        if gs is None:
            gs = in_features
        elif not isinstance(gs, int) or isinstance(gs, bool) or gs <= 0 or gs % 8:
            return f"group_size={gs!r} is not a positive multiple of 8 (or null for whole rows)"
        elif in_features % gs:
            return f"group_size={gs} does not divide in_features={in_features}"
        groups = in_features * out_features // gs
        if groups % PACK_FACTOR[cfg.nbits]:
            return (f"{cfg.nbits:g}-bit packing needs the group count ({groups}) to be a "
                    f"multiple of {PACK_FACTOR[cfg.nbits]}")
        return None

    def bits_per_weight(self, cfg: LayerConfig, in_features: int) -> float:
        """Packed weight + 16-bit scale + 16-bit zero, per weight (4:64 -> 4.5)."""
        return STORED_BITS[cfg.nbits] + META_BITS / (cfg.group_size or in_features)

    def stored_bits(self, cfg: LayerConfig, in_features: int, out_features: int) -> int:
        """Exactly what an (out, in) matrix stores, in bits: `bits_per_weight` times the
        weights, except that 3-bit values pack 10 to a 32-bit word along the groups, so each
        of the group's `group_size` columns rounds its word count up."""
        gs = cfg.group_size or in_features
        groups = in_features * out_features // gs
        values = -(-groups // 10) * 32 * gs if cfg.nbits == 3 else \
            round(STORED_BITS[cfg.nbits] * in_features * out_features)
        return values + META_BITS * groups

    # ---- tensors (import torch and hqq) ---------------------------------------------
    def quantize(self, weight, bias, cfg: LayerConfig, device, dtype, transposed: bool = False,
                 optimize: bool = True):
        """A packed layer of an (out, in) matrix, quantized on `device` (HQQ layers ignore
        .to()). `transposed`: the model reads the weight as (in, out) (GPT-2's Conv1D).
        Without `optimize`, the same packing without HQQ's solver (fast; timing layers)."""
        from . import hqq_layers

        return hqq_layers.quantize(weight, bias, cfg, device, dtype, transposed, optimize)

    def load(self, state: Mapping, transposed: bool, device, dtype):
        """A packed layer from its saved `state`."""
        from . import hqq_layers

        return hqq_layers.load(state, transposed, device, dtype)

    def state(self, layer) -> dict:
        """The saved form: hqq's own HQQLinear state dict (hqq's loader reads it too)."""
        layer.encoded_state_dict = False
        return dict(layer.state_dict())

    def dequantize(self, layer):
        return layer.dequantize()

    def gather(self, layer, ids):
        """Rows `ids` of the (rows, cols) matrix, dequantizing only those rows."""
        from . import hqq_layers

        return hqq_layers.gather_rows(layer, ids)

    def config_of(self, layer) -> LayerConfig:
        group = layer.meta["group_size"]
        return LayerConfig.from_json({"nbits": layer.meta["nbits"],
                                      "group_size": None if group == layer.in_features else group},
                                     NAME)

    def axis(self, layer) -> int:
        return layer.meta.get("axis", 1)

    def tensors(self, layer) -> list:
        """Every tensor the packed matrix stores (its bias apart)."""
        import torch

        meta = layer.meta
        return [layer.W_q] + [meta[k] for k in ("scale", "zero", "zero_scale", "scale_q",
                                                 "zero_q")
                              if isinstance(meta.get(k), torch.Tensor)]

    def affine(self, layer) -> Affine:
        from . import hqq_layers

        return hqq_layers.affine(layer)

    def loaders(self, qm, family: str | None, weights: Mapping[str, Mapping]) -> dict[str, str]:
        """Whether hqq's own loader can rebuild a saved folder of `qm` ("yes" or "no: why").
        hqq 0.2.8 rebuilds a transformers model and turns every saved state with `W_q`
        into its own HQQLinear; it matches layer types exactly (`type(m) in [nn.Linear,
        ...]`) and loads leaf modules only."""
        why = self._loader_problem(qm, family, weights)
        return {LOADER: f"no: {why}" if why else "yes"}

    def _loader_problem(self, qm, family, weights) -> str | None:
        if family != "hf":
            return "it rebuilds transformers models only (AutoHQQHFModel), not timm ones"
        if any(layer.quant_method != NAME for layer in qm.installed.values()):
            return "some layers are quantized with another method than hqq"
        for name in qm.installed:
            unit = qm.units[name]
            if unit.type == "embedding":
                return (f"{name} is a quantized embedding, which it would rebuild as an "
                        "HQQLinear (a matmul, not a lookup)")
            if unit.type == "expert":
                return (f"{name} is a quantized MoE expert, stored per expert, which it does "
                        "not read")
            cls = type(qm.originals[name])
            if cls.__name__ != "Linear" or cls.__module__ != "torch.nn.modules.linear":
                return (f"{name} is a {cls.__name__}, not exactly nn.Linear: it loads such a layer "
                        "in its first pass and then fails on it with \"'HQQLinear' object has no "
                        "attribute 'name'\"")
        modules = dict(qm.model.named_modules())
        for name in weights:
            if name in modules and next(modules[name].children(), None) is not None:
                return (f"{name or 'the model'} holds tensors beside submodules, and it loads "
                        "leaf modules only")
        return None

    def cache_key(self) -> str:
        """What a cached packed layer depends on besides the weights and the config."""
        return f"hqq {self.version()} axis1 meta16"


METHOD = HQQ()
