"""Plan files: which layer gets which quantization config.

The contract between `search`, `apply` and `report` (format `autoq.plan/2`)::

    {"format": "autoq.plan/2", "model": "smollm2",
     "method": "hqq", "methods": {"hqq": "0.2.8.post1"},  # default method; versions
     "layers": {"model.layers.0.self_attn.q_proj": {"nbits": 4, "group_size": 64},
                "model.layers.0.self_attn.k_proj": null},
     "default": {"nbits": 4, "group_size": 64},          # optional
     "metrics": {"ppl": 31.2, "bits_per_weight": 5.1, "size_mib": 180.2}}

`layers` keys are full module names; `null` keeps that layer in its original
precision; a layer not listed is not quantized, unless `default` is given, which
applies to every quantizable layer not listed except the model's head (list the
head explicitly to quantize it). A layer entry (and `default`) uses the plan's
`method` unless it names its own (`{"method": "hqq", "nbits": ...}`); `methods`
records the version of each method the plan was made with. The method checks the
entry's other keys (autoq.quant.METHODS). Other top-level keys are kept as they are.
`autoq.plan/1` files (HQQ only, no method keys) are still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

from .errors import UserError
from .io import write_json
from .quant import DEFAULT_METHOD, METHODS, LayerConfig, label_of

FORMAT = "autoq.plan/2"
READS = ("autoq.plan/1", FORMAT)   # /1: before methods were named (all HQQ)


def _layer_config(value: Any, where: str, method: str) -> LayerConfig | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be an object like {{\"nbits\": 4, \"group_size\": 64}} "
                        "or null; fix that entry.")
    name = value.get("method", method)
    if not isinstance(name, str) or name not in METHODS:
        raise UserError(f"{where}.method={name!r} is not one of {', '.join(METHODS.names)}.")
    return METHODS.get(name).parse(value, where)


@dataclass
class Plan:
    model: str
    layers: dict[str, LayerConfig | None] = field(default_factory=dict)
    default: LayerConfig | None = None
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # other top-level keys, kept verbatim
    versions: dict = field(default_factory=dict)  # method -> version it was made with

    def version_notes(self) -> list[str]:
        """One sentence per method this plan was made with in another version than the
        one installed (its configs may quantize slightly differently)."""
        return [f"the plan was made with {m} {v}; this is {m} {METHODS.get(m).version()}"
                for m, v in self.versions.items()
                if m in METHODS and v != METHODS.get(m).version()]

    # ---- JSON -------------------------------------------------------------------
    def to_json(self) -> dict:
        used = sorted({c.method for c in [*self.layers.values(), self.default] if c})
        method = used[0] if len(used) == 1 else DEFAULT_METHOD
        out = {"format": FORMAT, "model": self.model, "method": method,
               "methods": {m: self.versions.get(m) or METHODS.get(m).version()
                           for m in used or [method]},
               "layers": {k: (v.to_json(v.method != method) if v else None)
                          for k, v in self.layers.items()}}
        if self.default is not None:
            out["default"] = self.default.to_json(self.default.method != method)
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
        if obj["format"] not in READS:
            raise UserError(f"{source}: format is {obj['format']!r}; this autoq reads "
                            f"{' and '.join(map(repr, READS))}.")
        if not isinstance(obj["model"], str) or not obj["model"]:
            raise UserError(f"{source}: model must be a model name such as \"smollm2\".")
        if not isinstance(obj["layers"], Mapping):
            raise UserError(f"{source}: layers must be an object of module name -> config.")
        metrics = obj.get("metrics", {})
        if not isinstance(metrics, Mapping):
            raise UserError(f"{source}: metrics must be an object.")
        method = obj.get("method", DEFAULT_METHOD)
        if not isinstance(method, str) or method not in METHODS:
            raise UserError(f"{source}: method {method!r} is not one of "
                            f"{', '.join(METHODS.names)}.")
        layers = {str(k): _layer_config(v, f"{source}: layers[{k!r}]", method)
                  for k, v in obj["layers"].items()}
        default = _layer_config(obj["default"], f"{source}: default", method) \
            if "default" in obj else None
        versions = obj.get("methods", {})
        extra = {k: v for k, v in obj.items()
                 if k not in ("format", "model", "method", "methods", "layers", "default",
                              "metrics")}
        return cls(obj["model"], layers, default, dict(metrics), extra,
                   dict(versions) if isinstance(versions, Mapping) else {})

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
          if LayerConfig(cfg.nbits, g, cfg.method).problem(fin, fout) is None]
    if LayerConfig(cfg.nbits, None, cfg.method).problem(fin, fout) is None:
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
