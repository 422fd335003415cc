"""Where a layer sits: its block (the model's repeated transformer layer) and its role.

Blocks are found from the model's structure, whatever their attribute name
(`layers`, `h`, `blocks`, `block`, `decoder.layers`, Swin's `layers.N.blocks`): the
module class that repeats as siblings in a container (two or more instances side by
side), each instance holding an attention layer, with the most instances (so Swin's
blocks win over its stages; mixture-of-experts experts, which hold no attention, never
count as blocks). Blocks are numbered in model order, across containers. Without an
attention layer anywhere, the repeated class covering the most weights is used.

Roles form a small vocabulary, read from a layer's path inside its block:

    attn_in  attn_out  mlp_in  mlp_out  experts  router  embedding  head  other

A search space selects layers by role and block depth, so the shipped spaces fit any
decoder or ViT. The same role rules run on names alone (`role_of`), which is what
the report uses for plans (with the block prefixes stored in study.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from torch import nn

ROLES = ("attn_in", "attn_out", "mlp_in", "mlp_out", "experts", "router", "embedding", "head",
         "other")
_ATTN = re.compile(r"(^|_)(self_?)?(attn|attention)(_|$)|^(mixer|self_attention|cross_?attention)$")
_MLP = re.compile(r"(^|_)(mlp|ffn|feed_?forward|ff|moe|shared_experts?|dense_?relu_?dense)(_|$)")
_ATTN_OUT = {"o_proj", "out_proj", "dense", "c_proj", "proj", "wo", "o", "out", "output"}
_MLP_OUT = {"down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2", "wo", "proj", "lin2", "out_proj"}
_MLP_IN = {"gate_proj", "up_proj", "gate_up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "w3",
           "wi", "wi_0", "wi_1", "lin1", "fc_in"}
_ATTN_IN = {"q_proj", "k_proj", "v_proj", "qkv", "qkv_proj", "query_key_value", "c_attn",
            "query", "key", "value", "wqkv", "in_proj", "q", "k", "v"}
_ROUTER = re.compile(r"^(gate|router|switch)$|_gate$|router")
_NUMBER = re.compile(r"^(.*?)\.(\d+)\.(.+)$")   # the first numeric part of a dotted name


@dataclass(frozen=True)
class Structure:
    blocks: tuple[str, ...]                      # block prefixes, in model order
    roles: Mapping[str, str] = field(default_factory=dict)   # layer name -> role

    def block_of(self, name: str) -> int | None:
        """The block index of a layer name (the longest block prefix it starts with)."""
        best = None
        for i, prefix in enumerate(self.blocks):
            if name.startswith(prefix + ".") and (best is None or
                                                   len(prefix) > len(self.blocks[best])):
                best = i
        return best

    def inside(self, name: str) -> str:
        """The name relative to its block (the whole name outside the blocks)."""
        b = self.block_of(name)
        return name if b is None else name[len(self.blocks[b]) + 1:]

    def to_json(self) -> dict:
        return {"blocks": list(self.blocks)}


def role_of(rel: str, layer_type: str = "linear", head: bool = False) -> str:
    """A layer's role from its path inside its block (`self_attn.q_proj`, `mlp.fc1`)."""
    if head:
        return "head"
    if layer_type == "embedding":
        return "embedding"
    parts = rel.split(".")
    if layer_type == "expert" or "experts" in parts:
        return "experts"
    leaf = parts[-1].lower()
    if _ROUTER.search(leaf) and leaf not in _MLP_IN:
        return "router"
    parents = [p.lower() for p in parts[:-1] if not p.isdigit()]
    if any(_ATTN.search(p) for p in parents):
        return "attn_out" if leaf in _ATTN_OUT else "attn_in"
    if any(_MLP.search(p) for p in parents) or leaf in _MLP_IN or leaf in {"fc2", "down_proj"}:
        return "mlp_out" if leaf in _MLP_OUT else "mlp_in"
    if leaf in _ATTN_IN:
        return "attn_in"
    return "other"


# ---- from the model ---------------------------------------------------------------------
def _candidates(model: nn.Module, units: Iterable[str]) -> dict[type, list[str]]:
    """Module classes that repeat as siblings, with all their instances' names."""
    names = {id(m): n for n, m in model.named_modules()}
    sibling_classes = set()
    for parent in model.modules():
        counts: dict[type, int] = {}
        for child in parent.children():
            counts[type(child)] = counts.get(type(child), 0) + 1
        sibling_classes |= {c for c, k in counts.items() if k >= 2}
    unit_names = list(units)
    out: dict[type, list[str]] = {}
    for m in model.modules():
        if type(m) in sibling_classes and id(m) in names and names[id(m)]:
            prefix = names[id(m)]
            if any(u.startswith(prefix + ".") for u in unit_names):
                out.setdefault(type(m), []).append(prefix)
    return out


def find_blocks(model: nn.Module, weights: Mapping[str, int]) -> tuple[str, ...]:
    """The prefixes of the model's repeated blocks, in model order (see the module doc)."""
    def covered(prefixes: list[str]) -> int:
        return sum(w for u, w in weights.items() if any(u.startswith(p + ".") for p in prefixes))

    def attention(prefix: str) -> bool:
        return any(u.startswith(prefix + ".") and
                   role_of(u[len(prefix) + 1:]) in ("attn_in", "attn_out") for u in weights)

    found = _candidates(model, weights)
    with_attn = {c: p for c, p in found.items() if all(attention(x) for x in p)}
    pool = with_attn or found
    if not pool:
        return ()
    if with_attn:
        best = max(pool, key=lambda c: (len(pool[c]), covered(pool[c])))
    else:
        best = max(pool, key=lambda c: (covered(pool[c]), len(pool[c])))
    return tuple(pool[best])


def analyse(model: nn.Module, units: Mapping, heads: set[str]) -> Structure:
    """Blocks and roles of every quantizable layer (`units`: name -> autoq.layers.Unit)."""
    blocks = find_blocks(model, {n: u.weights for n, u in units.items()})
    s = Structure(blocks)
    roles = {n: role_of(s.inside(n), u.type, n in heads) for n, u in units.items()}
    return Structure(blocks, roles)


def from_names(names: Iterable[str], blocks: Iterable[str] | None = None) -> Structure:
    """The structure of plan layer names without the model: the stored block prefixes,
    or else the first numeric part of each name (`model.layers.3.` -> block 3)."""
    names = list(names)
    if blocks is None:
        found: dict[int, str] = {}
        for n in names:
            m = _NUMBER.match(n)
            if m:
                found.setdefault(int(m.group(2)), f"{m.group(1)}.{m.group(2)}")
        blocks = [found[k] for k in sorted(found)]
    s = Structure(tuple(blocks))
    return Structure(s.blocks, {n: role_of(s.inside(n)) for n in names})
