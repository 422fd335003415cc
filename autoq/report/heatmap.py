"""The bit-allocation heatmap and plan summaries: pure data from a plan's layers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..quant import FP, LayerConfig, label_of
from ..models.structure import from_names

FP_BITS = 16.0          # what a layer kept in full precision shows as in the heatmap
HEAD_ROLES = ("lm_head", "head", "head_dist")
EMBEDDINGS = ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "embed_positions")
ROLE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
              "qkv", "proj", "fc1", "fc2")


@dataclass
class Heatmap:
    blocks: list[str]               # x axis: "0", "1", ..., then "head" for layers outside blocks
    roles: list[str]                # y axis: q_proj, k_proj, ..., lm_head
    bits: list[list[float | None]]  # [role][block]: nbits; FP_BITS = kept in full precision;
                                    # None = no such layer
    text: list[list[str]]           # group size ("64", "row"), "fp", or "" (no layer)
    names: list[list[str]]          # full module name, or ""


def _config(value) -> LayerConfig | None:
    """A layer entry of a plan (JSON object, LayerConfig or None) as a LayerConfig."""
    return LayerConfig.from_json(value) if isinstance(value, Mapping) else value


def heatmap(layers: Mapping[str, Any], blocks: Sequence[str] | None = None) -> Heatmap:
    """Bits per (layer, block) from a plan's layers (layer name -> config or None).

    The block comes from the model's block prefixes (`blocks`, as study.json stores
    them), else from the first numeric part of the name (model.layers.N.…); the row is
    the layer's last name part (q_proj, fc1, …). Layers outside the blocks (the
    embedding, the head) get a column of their own."""
    s = from_names(layers, blocks)
    cells: dict[tuple[str, str], str] = {}
    for name in layers:
        index = s.block_of(name)
        label = "" if index is None else str(index) if blocks else \
            s.blocks[index].rpartition(".")[2]   # by name: the number in it
        cells[(label, s.inside(name))] = name
    rests_by_role = Counter((b, r.rsplit(".", 1)[-1]) for b, r in cells)
    unique = all(n == 1 for n in rests_by_role.values())  # last part names the role
    placed = {(b, r.rsplit(".", 1)[-1] if unique else r): name for (b, r), name in cells.items()}
    numbers = sorted({int(b) for b, _ in placed if b})
    outside = sorted({r for b, r in placed if not b})
    extra = "head" if outside and all(r.rsplit(".", 1)[-1] in HEAD_ROLES for r in outside) \
        else "embed/head" if outside and all(r.rsplit(".", 1)[-1] in HEAD_ROLES + EMBEDDINGS
                                             for r in outside) else "other"
    blocks = [str(n) for n in numbers] + ([extra] if outside else [])
    inner = {r for b, r in placed if b}
    roles = sorted(inner, key=lambda r: (ROLE_ORDER.index(r) if r in ROLE_ORDER else
                                         len(ROLE_ORDER), r)) + \
        [r for r in outside if r not in inner]
    bits = [[None] * len(blocks) for _ in roles]
    text = [[""] * len(blocks) for _ in roles]
    names = [[""] * len(blocks) for _ in roles]
    for (b, r), name in placed.items():
        i, j = roles.index(r), blocks.index(b if b else extra)
        cfg = _config(layers[name])
        bits[i][j] = FP_BITS if cfg is None else float(cfg.nbits)
        text[i][j] = FP if cfg is None else str(cfg.group_size or "row")
        names[i][j] = name
    return Heatmap(blocks, roles, bits, text, names)


def config_label(value) -> str:
    return label_of(_config(value))


def plan_summary(layers: Mapping[str, Any]) -> str:
    """Layer counts per config, most used first: '4:64 ×150 · 8:64 ×30 · fp ×1'."""
    counts = Counter(config_label(v) for v in layers.values())
    return " · ".join(f"{label} ×{n}" for label, n in counts.most_common())
