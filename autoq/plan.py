"""Plan files: which layer gets which HQQ config.

The contract between `search`, `apply` and `report` (format `autoq.plan/1`)::

    {"format": "autoq.plan/1", "model": "smollm2",
     "layers": {"model.layers.0.self_attn.q_proj": {"nbits": 4, "group_size": 64},
                "model.layers.0.self_attn.k_proj": null},
     "default": {"nbits": 4, "group_size": 64},          # optional
     "metrics": {"ppl": 31.2, "bits_per_weight": 5.1, "size_mib": 180.2}}

`layers` keys are full module names; `null` keeps that layer in its original
precision; a layer not listed is not quantized, unless `default` is given, which
applies to every quantizable layer not listed except the model's head (list the
head explicitly to quantize it). Other top-level keys are kept as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

from .errors import UserError
from .io import write_json

FORMAT = "autoq.plan/1"
NBITS = (1, 1.58, 2, 3, 4, 8)  # HQQ's bit widths
PACK_FACTOR = {1: 8, 1.58: 4, 2: 4, 3: 1, 4: 2, 8: 1}  # values per packed byte (3-bit pads)
STORED_BITS = {1: 1, 1.58: 2, 2: 2, 3: 3.2, 4: 4, 8: 8}  # 1.58 packs as 2-bit; 3-bit: 10 per int32
LAYER_KEYS = ("nbits", "group_size")
FP = "fp"   # the label of "not quantized" (None in code, null in JSON)


@dataclass(frozen=True, order=True)
class LayerConfig:
    """One HQQ setting: `nbits` bits per weight, one scale/zero per `group_size` weights."""

    nbits: float
    group_size: int | None  # None: one group per row (whole in_features)

    def to_json(self) -> dict:
        return {"nbits": self.nbits, "group_size": self.group_size}

    @classmethod
    def from_json(cls, obj: Mapping | None) -> "LayerConfig | None":
        """From a trusted {"nbits", "group_size"} object (or None: not quantized);
        integral bit widths become ints (4.0 -> 4)."""
        if obj is None:
            return None
        nbits = obj["nbits"]
        return cls(int(nbits) if float(nbits).is_integer() else nbits, obj["group_size"])

    @property
    def label(self) -> str:
        return f"{self.nbits:g}:{self.group_size or 'row'}"

    def bits_per_weight(self, in_features: int) -> float:
        """Packed weight + 16-bit scale + 16-bit zero, per weight (4:64 -> 4.5)."""
        return STORED_BITS[self.nbits] + 32 / (self.group_size or in_features)

    def problem(self, in_features: int, out_features: int) -> str | None:
        """Why this config cannot quantize an (out, in) weight, or None if it can."""
        if self.nbits not in NBITS:
            return f"nbits={self.nbits!r} is not one of HQQ's {list(NBITS)}"
        gs = self.group_size
        if gs is None:
            gs = in_features
        elif not isinstance(gs, int) or isinstance(gs, bool) or gs <= 0 or gs % 8:
            return f"group_size={gs!r} is not a positive multiple of 8 (or null for whole rows)"
        elif in_features % gs:
            return f"group_size={gs} does not divide in_features={in_features}"
        groups = in_features * out_features // gs
        if groups % PACK_FACTOR[self.nbits]:
            return (f"{self.nbits:g}-bit packing needs the group count ({groups}) to be a "
                    f"multiple of {PACK_FACTOR[self.nbits]}")
        return None

    @staticmethod
    def parse(text: str) -> "LayerConfig":
        """`4:64` -> LayerConfig(4, 64); `4:row` or `4:none` -> whole-row groups."""
        try:
            nb, gs = text.split(":")
            nbits = float(nb)
            nbits = int(nbits) if nbits.is_integer() else nbits
            group = None if gs.lower() in ("row", "none", "null") else int(gs)
        except ValueError:
            raise UserError(f"--uniform {text!r} is not NBITS:GROUP_SIZE; write for example 4:64.")
        cfg = LayerConfig(nbits, group)
        if nbits not in NBITS:
            raise UserError(f"--uniform {text!r}: nbits must be one of {list(NBITS)}.")
        return cfg


def label_of(cfg: LayerConfig | None) -> str:
    """`4:64`, `4:row`, or `fp` for a layer kept in full precision."""
    return FP if cfg is None else cfg.label


def _layer_config(value: Any, where: str) -> LayerConfig | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be an object like {{\"nbits\": 4, \"group_size\": 64}} "
                        "or null; fix that entry.")
    unknown = sorted(map(str, set(value) - set(LAYER_KEYS)))
    if unknown:
        raise UserError(f"{where} has unknown key {unknown[0]!r}; only nbits and group_size "
                        "are allowed.")
    for key in LAYER_KEYS:
        if key not in value:
            raise UserError(f"{where} is missing {key!r}; add it (group_size may be null).")
    nbits, gs = value["nbits"], value["group_size"]
    if isinstance(nbits, bool) or not isinstance(nbits, (int, float)) or nbits not in NBITS:
        raise UserError(f"{where}.nbits={nbits!r} is not one of HQQ's {list(NBITS)}; "
                        "pick one of those.")
    if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs <= 0 or gs % 8):
        raise UserError(f"{where}.group_size={gs!r} must be a positive multiple of 8 or "
                        "null; fix it.")
    return LayerConfig.from_json(value)


@dataclass
class Plan:
    model: str
    layers: dict[str, LayerConfig | None] = field(default_factory=dict)
    default: LayerConfig | None = None
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # other top-level keys, kept verbatim

    # ---- JSON -------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {"format": FORMAT, "model": self.model,
               "layers": {k: (v.to_json() if v else None) for k, v in self.layers.items()}}
        if self.default is not None:
            out["default"] = self.default.to_json()
        out["metrics"] = dict(self.metrics)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any, source: str = "plan") -> "Plan":
        if not isinstance(obj, Mapping):
            raise UserError(f"{source}: a plan must be a JSON object with format, model and layers.")
        for key in ("format", "model", "layers"):
            if key not in obj:
                raise UserError(f"{source}: missing field {key!r}; a plan needs format, model "
                                "and layers.")
        if obj["format"] != FORMAT:
            raise UserError(f"{source}: format is {obj['format']!r}; this autoq reads {FORMAT!r}.")
        if not isinstance(obj["model"], str) or not obj["model"]:
            raise UserError(f"{source}: model must be a model name such as \"smollm2\".")
        if not isinstance(obj["layers"], Mapping):
            raise UserError(f"{source}: layers must be an object of module name -> config.")
        metrics = obj.get("metrics", {})
        if not isinstance(metrics, Mapping):
            raise UserError(f"{source}: metrics must be an object.")
        layers = {str(k): _layer_config(v, f"{source}: layers[{k!r}]")
                  for k, v in obj["layers"].items()}
        default = _layer_config(obj["default"], f"{source}: default") if "default" in obj else None
        extra = {k: v for k, v in obj.items()
                 if k not in ("format", "model", "layers", "default", "metrics")}
        return cls(obj["model"], layers, default, dict(metrics), extra)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UserError(f"{path}: no such plan file; give the path of a plan JSON.")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read the plan file ({e.__class__.__name__}); "
                            "check the path and its permissions.")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                            f"{e.msg}); fix the file.")
        except RecursionError:
            raise UserError(f"{path}: JSON nested too deeply to be a plan; fix the file.")
        return cls.from_json(obj, str(path))

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    # ---- against a model --------------------------------------------------------
    def resolve(self, shapes: Mapping[str, tuple[int, int]], keep: Collection[str] = frozenset(),
                source: str = "plan") -> dict[str, LayerConfig | None]:
        """Every quantizable layer -> its config (None = not quantized), validated against
        the model's (in_features, out_features) per layer name. `default` skips the
        layers in `keep` (the head, the embeddings, routers)."""
        for name in self.layers:
            if name not in shapes:
                close = [n for n in shapes if n.endswith(name.split(".")[-1])][:2]
                hint = f" (layers look like {close[0]!r})" if close else ""
                raise UserError(f"{source}: layers[{name!r}] is not a quantizable layer of model "
                                f"{self.model!r}{hint}; remove it or fix the name.")
        out: dict[str, LayerConfig | None] = {}
        for name, (fin, fout) in shapes.items():
            if name in self.layers:
                cfg, where = self.layers[name], f"layers[{name!r}]"
            elif self.default is not None and name not in keep:
                cfg, where = self.default, f"default (applied to {name!r})"
            else:
                cfg, where = None, ""
            if cfg is not None:
                why = cfg.problem(fin, fout)
                if why:
                    raise UserError(f"{source}: {where}: {why}; {fix(cfg, fin, fout)}.")
            out[name] = cfg
        return out


def fix(cfg: LayerConfig, fin: int, fout: int) -> str:
    """How to make `cfg` fit an (out, in) matrix: the group sizes that work."""
    ok = [g for g in range(8, min(fin, 1024) + 1, 8)
          if LayerConfig(cfg.nbits, g).problem(fin, fout) is None]
    if LayerConfig(cfg.nbits, None).problem(fin, fout) is None:
        ok.append("null")
    if not ok:
        return (f"no group size lets {cfg.nbits:g}-bit pack this {fout}x{fin} matrix; pick "
                "other bits or leave the layer out")
    shown = ", ".join(map(str, ok[:8])) + (", ..." if len(ok) > 8 else "")
    return f"choose a group_size that divides {fin} (valid: {shown})"


def uniform_plan(model: str, cfg: LayerConfig, shapes: Mapping[str, tuple[int, int]],
                 keep: Collection[str] = frozenset()) -> Plan:
    """`cfg` on every quantizable layer except those in `keep` (the usual HQQ baseline).
    A layer whose shape cannot take `cfg` stays unquantized and is named, with the
    reason, under the plan's `skipped` key."""
    layers, skipped = {}, {}
    for name, (fin, fout) in shapes.items():
        why = None if name in keep else cfg.problem(fin, fout)
        layers[name] = None if name in keep or why else cfg
        if why:
            skipped[name] = why
    return Plan(model, layers, extra={"skipped": skipped} if skipped else {})


def tie_notes(resolved: Mapping[str, LayerConfig | None], groups: list[list[str]]) -> list[str]:
    """What a plan does to layers that share one matrix (a tied embedding and head):
    one sentence per group it unties (the layers then store two tensors)."""
    notes = []
    for group in groups:
        cfgs = {label_of(resolved.get(n)) for n in group}
        if len(cfgs) > 1:
            parts = ", ".join(f"{n} {label_of(resolved.get(n))}" for n in group)
            notes.append(f"untied: {parts} (one shared matrix in the model; stored and counted "
                         "once per config now)")
    return notes
