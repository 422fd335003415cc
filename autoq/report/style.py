"""Colours and markers shared by the PNG and HTML drawers, so one study or one bit
width looks the same in every picture."""

from __future__ import annotations

from .heatmap import FP_BITS

STUDY_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
                "#17becf")
STUDY_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")        # matplotlib names
PLOTLY_MARKERS = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross",
                  "x", "hexagon")

# bits -> colour (viridis steps: fewer bits darker); fp light grey
BIT_COLORS = {1: "#440154", 1.58: "#46327e", 2: "#365c8d", 3: "#1fa187", 4: "#6ece58",
              8: "#fde725", FP_BITS: "#d9d9d9"}
DARK_BITS = (1, 1.58, 2, 3)      # white text on these


def bit_label(bits: float) -> str:
    return "fp (not quantized)" if bits == FP_BITS else f"{bits:g}-bit"


def study_style(i: int) -> tuple[str, str, str]:
    """(colour, matplotlib marker, plotly marker) of the i-th study."""
    return (STUDY_COLORS[i % len(STUDY_COLORS)], STUDY_MARKERS[i % len(STUDY_MARKERS)],
            PLOTLY_MARKERS[i % len(PLOTLY_MARKERS)])
