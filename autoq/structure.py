"""Where a layer sits in the model: its block (the repeated transformer layer) and its
role inside it, read from the full module name. One parser, used by the search
spaces (block selectors) and the report (the bit-allocation heatmap).
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.+)$")   # the first numeric part of a dotted name


def split_block(name: str) -> tuple[int | None, str]:
    """(block index, the rest of the name after it); (None, name) outside the blocks.

    `model.layers.3.mlp.down_proj` -> (3, "mlp.down_proj"); `lm_head` -> (None, "lm_head")."""
    m = _BLOCK.match(name)
    return (int(m.group(2)), m.group(3)) if m else (None, name)


def block_of(name: str) -> int | None:
    return split_block(name)[0]
