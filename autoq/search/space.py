"""Search spaces (`search_spaces/*.yaml`): which choices a search makes.

    format: autoq.space/1
    options: [null, "8:64", "4:64", "4:128", "3:64"]   # NBITS:GROUP; null (or fp) = not quantized
    groups:                    # first matching group wins; unmatched layers stay fp
      - name: attn             # one shared choice for every matching layer ...
        roles: [attn_in, attn_out]   # layer roles (autoq/structure.py), and/or
        match: 'self_attn\\.'  # a regex on the full layer name
        blocks: [first_quarter, last_quarter]  # all | first | last | middle |
                               # first_quarter .. last_quarter | "0-3" | a list of these
        per_layer: false       # ... or, with true, one choice per layer
        options: ["8:64"]      # optional: this group's own options
    ignore: ['lm_head']        # regexes: never quantized
    pinned: {'model.layers.0.mlp.down_proj': "8:64"}   # fixed, not searched
    baselines: ["8:64", "4:64", "4:128", "3:64"]   # uniform reference points

Blocks are the model's repeated blocks, found structurally (autoq/structure.py).
Options are filtered per layer to what is valid for its shape (and backend);
a shared group keeps the options valid for all its layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import yaml

from ..errors import UserError, deprecated
from ..quant import FP, LayerConfig, label_of
from ..io import resource_dir
from ..models.structure import ROLES, Structure, from_names, role_of

FORMAT = "autoq.space/1"
LEGACY_FP = ("keep",)   # older spelling of the fp option (read with a deprecation line)
TOP_KEYS = {"format", "description", "options", "groups", "ignore", "pinned", "baselines"}
GROUP_KEYS = {"name", "match", "roles", "blocks", "per_layer", "options"}
QUARTERS = {"first_quarter": 0, "second_quarter": 1, "third_quarter": 2, "last_quarter": 3}


def parse_option(value, where: str) -> LayerConfig | None:
    if value in LEGACY_FP:
        deprecated(f"the option {value!r} in a search space", f"{FP!r} or null")
    if value is None or value == FP or value in LEGACY_FP:
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: option {value!r} must be \"NBITS:GROUP\" (e.g. \"4:64\") or null.")
    try:
        cfg = LayerConfig.parse(value)
    except UserError:
        raise UserError(f"{where}: option {value!r} must be \"NBITS:GROUP\" with nbits in "
                        "1, 1.58, 2, 3, 4, 8 (e.g. \"4:64\") or null.")
    if cfg.group_size is not None and cfg.group_size % 8:
        raise UserError(f"{where}: option {value!r}: group_size must be a multiple of 8.")
    return cfg


def _block_filter(spec, where: str) -> Callable[[int | None, int], bool]:
    if isinstance(spec, list):  # any of several selectors
        parts = [_block_filter(s, where) for s in spec]
        return lambda b, n: any(p(b, n) for p in parts)
    if spec in (None, "all"):
        return lambda b, n: True
    if spec == "first":
        return lambda b, n: b == 0
    if spec == "last":
        return lambda b, n: b is not None and b == n - 1
    if spec == "middle":
        return lambda b, n: b is not None and 0 < b < n - 1
    if isinstance(spec, str) and spec in QUARTERS:
        q = QUARTERS[spec]
        return lambda b, n: b is not None and (b * 4) // max(n, 1) == q
    m = re.fullmatch(r"(\d+)-(\d+)", str(spec))
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        return lambda b, n: b is not None and lo <= b <= hi
    raise UserError(f"{where}: blocks {spec!r} must be all, first, last, middle, "
                    "first_quarter..last_quarter, or a range like \"0-3\".")


def _roles(value, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    roles = value if isinstance(value, list) else [value]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise UserError(f"{where}: roles {bad or roles!r} must be a list of "
                        f"{', '.join(ROLES)}.")
    return tuple(roles)


def _regex(pattern, where: str) -> re.Pattern:
    try:
        return re.compile(str(pattern))
    except re.error as e:
        raise UserError(f"{where}: {pattern!r} is not a valid regex ({e}).")


@dataclass(frozen=True)
class Group:
    name: str
    match: re.Pattern | None           # regex on the full layer name (None: any)
    roles: tuple[str, ...] | None      # layer roles (autoq.structure.ROLES; None: any)
    blocks: Callable[[int | None, int], bool]
    per_layer: bool
    options: tuple[LayerConfig | None, ...]

    def takes(self, name: str, role: str, block: int | None, n_blocks: int) -> bool:
        return (self.match is None or bool(self.match.search(name))) and \
            (self.roles is None or role in self.roles) and self.blocks(block, n_blocks)


@dataclass(frozen=True)
class Choice:
    """One search dimension: an Optuna categorical parameter over option labels."""
    param: str
    layers: tuple[str, ...]
    options: tuple[LayerConfig | None, ...]
    tied: tuple[str, ...] = ()   # layers whose matrix is an earlier layer's of this choice

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label_of(o) for o in self.options)

    @property
    def stored(self) -> tuple[str, ...]:
        """The layers whose matrices the choice stores: a tied matrix once (sizes and
        bit budgets count these; sensitivities and times count every layer)."""
        return tuple(n for n in self.layers if n not in self.tied)


@dataclass(frozen=True)
class Space:
    source: str
    options: tuple[LayerConfig | None, ...]
    groups: tuple[Group, ...]
    ignore: tuple[re.Pattern, ...]
    pinned: Mapping[str, LayerConfig | None]
    baselines: tuple[LayerConfig, ...]

    def assign(self, shapes: Mapping[str, tuple[int, int]],
               structure: Structure | None = None) -> dict[str, str | None]:
        """Layer -> the group that searches it, "pinned", "ignored", or None (not
        matched: kept in full precision)."""
        s = structure or from_names(shapes)
        n_blocks = len(s.blocks)
        out: dict[str, str | None] = {}
        for name in shapes:
            if name in self.pinned:
                out[name] = "pinned"
            elif any(r.search(name) for r in self.ignore):
                out[name] = "ignored"
            else:
                role = s.roles.get(name) or role_of(s.inside(name))
                out[name] = next((g.name for g in self.groups
                                  if g.takes(name, role, s.block_of(name), n_blocks)), None)
        return out

    def unsearched(self, shapes: Mapping[str, tuple[int, int]],
                   structure: Structure | None = None) -> dict[str, str]:
        """Layers the space leaves in full precision, and why (for the coverage)."""
        why = {None: "not matched by the search space", "ignored": "ignored by the search space"}
        return {n: why[g] for n, g in self.assign(shapes, structure).items() if g in why}

    def bind(self, shapes: Mapping[str, tuple[int, int]],
             allowed: Callable[[LayerConfig, int, int], bool] = lambda c, i, o: True,
             structure: Structure | None = None, ties: Iterable[Iterable[str]] = (),
             ) -> tuple[list[Choice], dict[str, LayerConfig | None]]:
        """The space's choices for a model's layers, and its fixed (pinned/kept) layers.
        Layers that share one matrix (`ties`: a tied embedding and head) in one group
        are one choice, also in a per-layer group."""
        for name, cfg in self.pinned.items():
            if name not in shapes:
                raise UserError(f"{self.source}: pinned layer {name!r} is not a quantizable layer "
                                "of this model; fix the name.")
            if cfg is not None and cfg.problem(*shapes[name]):
                raise UserError(f"{self.source}: pinned {name!r}: {cfg.problem(*shapes[name])}.")
        assigned = self.assign(shapes, structure)
        fixed: dict[str, LayerConfig | None] = {n: None for n in shapes}
        fixed.update(self.pinned)
        choices = []
        for g in self.groups:
            layers = [n for n, group in assigned.items() if group == g.name]
            for n in layers:
                fixed.pop(n)
            units = _per_layer(layers, ties) if g.per_layer else ([layers] if layers else [])
            for unit in units:
                ok = tuple(o for o in dict.fromkeys(g.options or self.options)  # no repeats
                           if o is None or all(o.problem(*shapes[n]) is None
                                               and allowed(o, *shapes[n]) for n in unit))
                if not ok:
                    raise UserError(f"{self.source}: no option of group {g.name!r} is valid for "
                                    f"{unit[0]} {shapes[unit[0]]}; add one that fits.")
                choices.append(Choice(unit[0] if g.per_layer else g.name, tuple(unit), ok,
                                      _repeats(unit, ties)))
        if not choices:
            raise UserError(f"{self.source}: no group of this space selects any layer of this "
                            "model; check its match and roles (see `autoq search --help`).")
        return choices, fixed


def _repeats(unit: list[str], ties: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """The layers of `unit` that share their matrix with an earlier layer of it."""
    group_of = {n: i for i, g in enumerate(ties) for n in g}
    seen, out = set(), []
    for n in unit:
        g = group_of.get(n)
        if g is not None and g in seen:
            out.append(n)
        seen.add(g)
    return tuple(out)


def _per_layer(layers: list[str], ties: Iterable[Iterable[str]]) -> list[list[str]]:
    """One unit per layer, except that tied layers of the group form one unit."""
    tie_of = {n: tuple(g) for g in map(tuple, ties) for n in g}
    units, seen = [], set()
    for n in layers:
        if n in seen:
            continue
        unit = [m for m in tie_of.get(n, (n,)) if m in layers] or [n]
        seen.update(unit)
        units.append(unit)
    return units


ALIASES = {"llama-per-layer": "lm-per-layer", "llama-grouped": "lm-grouped"}  # deprecated


def load_space(path_or_name: str | Path) -> Space:
    path = Path(path_or_name)
    if not path.exists():
        name = ALIASES.get(str(path_or_name), str(path_or_name))
        if name != str(path_or_name):
            deprecated(f"--space {path_or_name}", f"--space {name}")
        shipped = resource_dir("search_spaces") / f"{name}.yaml"
        if not shipped.exists():
            names = ", ".join(p.stem for p in sorted(resource_dir("search_spaces").glob("*.yaml")))
            raise UserError(f"--space {path_or_name}: no such file or shipped space; "
                            f"use a YAML path or one of {names}.")
        path = shipped
    src = str(path)
    try:
        obj = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{src}: cannot read it ({e.__class__.__name__}).")
    except yaml.YAMLError as e:
        raise UserError(f"{src}: not valid YAML ({str(e).splitlines()[0]}); fix the file.")
    except RecursionError:
        raise UserError(f"{src}: YAML nested too deeply to be a search space; fix the file.")
    return parse_space(obj, src)


def parse_space(obj, src: str) -> Space:
    if not isinstance(obj, dict):
        raise UserError(f"{src}: a search space must be a mapping with format, options and groups.")
    unknown = sorted(set(map(str, obj)) - TOP_KEYS)
    if unknown:
        raise UserError(f"{src}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(TOP_KEYS))}.")
    if obj.get("format") != FORMAT:
        raise UserError(f"{src}: format must be {FORMAT!r}.")
    for key in ("options", "groups"):
        if not isinstance(obj.get(key), list) or not obj[key]:
            raise UserError(f"{src}: {key} must be a non-empty list.")
    options = tuple(parse_option(o, f"{src}: options") for o in obj["options"])
    groups = []
    for i, g in enumerate(obj["groups"]):
        where = f"{src}: groups[{i}]"
        if not isinstance(g, dict) or "name" not in g or not ("match" in g or "roles" in g):
            raise UserError(f"{where} must be a mapping with a name and a match or roles.")
        bad = sorted(set(map(str, g)) - GROUP_KEYS)
        if bad:
            raise UserError(f"{where}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(GROUP_KEYS))}.")
        own = g.get("options")
        if own is not None and (not isinstance(own, list) or not own):
            raise UserError(f"{where}: options must be a non-empty list.")
        if not isinstance(g.get("per_layer", False), bool):
            raise UserError(f"{where}: per_layer must be true or false.")
        groups.append(Group(str(g["name"]),
                            _regex(g["match"], where) if "match" in g else None,
                            _roles(g.get("roles"), where),
                            _block_filter(g.get("blocks"), where), g.get("per_layer", False),
                            tuple(parse_option(o, where) for o in own) if own else ()))
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise UserError(f"{src}: group names must be unique.")
    ignore = obj.get("ignore") or []
    pinned = obj.get("pinned") or {}
    baselines = obj.get("baselines") or []
    if not isinstance(ignore, list) or not isinstance(pinned, dict) or not isinstance(baselines, list):
        raise UserError(f"{src}: ignore and baselines must be lists, pinned a mapping.")
    return Space(src, options, tuple(groups), tuple(_regex(r, f"{src}: ignore") for r in ignore),
                 {str(k): parse_option(v, f"{src}: pinned[{k!r}]") for k, v in pinned.items()},
                 tuple(c for c in (parse_option(b, f"{src}: baselines") for b in baselines) if c))
