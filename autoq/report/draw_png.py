"""PNG pictures (matplotlib, Agg, no pyplot state) from the data steps in data.py.
Each function returns the PNG bytes; the caller writes them atomically."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter  # noqa: E402

from ..plan import FP  # noqa: E402
from .data import Panel, Study  # noqa: E402
from .heatmap import Heatmap, heatmap  # noqa: E402
from .rows import caption  # noqa: E402
from .style import BIT_COLORS, DARK_BITS, bit_label, study_style  # noqa: E402

DPI = 150
HEAT_DPI = 110     # the heatmaps are large already


def _png(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def pareto(panel: Panel) -> bytes:
    """Quality against one axis: every trial faint, the front as a staircase, the
    target as a dashed line, uniform configs and fp as labelled reference points."""
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    ax = fig.add_subplot()
    for i, s in enumerate(panel.series):
        color, marker, _ = study_style(i)
        name = s.study.name
        if s.trials:
            ax.scatter([p.x for p in s.trials], [p.y for p in s.trials], s=16, color=color,
                       marker=marker, alpha=0.25, linewidths=0,
                       label=f"{name}: all trials ({len(s.trials)})")
        if s.front:
            ax.plot(*zip(*s.stairs), color=color, lw=1.6, alpha=0.9)
            ax.scatter([p.x for p in s.front], [p.y for p in s.front], s=46, color=color,
                       marker=marker, edgecolors="black", linewidths=0.6, zorder=3,
                       label=f"{name}: Pareto front ({len(s.front)})")
        if s.study.target is not None:
            ax.axhline(s.study.target, color=color, ls="--", lw=1.2,
                       label=f"{name}: target {s.study.goal.text()}")
    uniform = [r for r in panel.refs if r.label != FP]
    for off, marker in ((0, "D"), (1, "^"), (-1, "v")):
        refs = [r for r in uniform if r.off == off]
        if refs:
            ax.scatter([r.x for r in refs], [r.shown_y for r in refs], marker=marker, s=42,
                       facecolors="white", edgecolors="0.15", linewidths=1.1, zorder=4,
                       label=None if off else "uniform HQQ nbits:group (head not quantized)")
    fps = [r for r in panel.refs if r.label == FP]
    if fps:
        ax.scatter([r.x for r in fps], [r.shown_y for r in fps], marker="*", s=170,
                   color="black", zorder=4, label="fp (unquantized)")
    x0, x1 = ax.get_xlim()
    for r in panel.refs:  # labels point inwards, below the marker at the top edge
        right = r.x > x0 + 0.75 * (x1 - x0)
        ax.annotate(r.text, (r.x, r.shown_y), ha="right" if right else "left",
                    xytext=(-6 if right else 6, -12 if r.label == FP or r.off > 0 else 5),
                    textcoords="offset points", fontsize=8, color="0.1", zorder=6,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    if panel.log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 5, 7)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    if panel.metric == "accuracy":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ax.set_ylim(*panel.y_range)
    ax.set_xlabel(panel.x_label)
    ax.set_ylabel(panel.y_label)
    ax.set_title("\n".join(filter(None, (panel.title, panel.subtitle, panel.note))), fontsize=10)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    return _png(fig)


def _heat_axes(ax, hm: Heatmap, title: str, last: bool) -> set[float]:
    import numpy as np
    from matplotlib.colors import to_rgba

    rgba = np.ones((len(hm.roles), len(hm.blocks), 4))
    for i, row in enumerate(hm.bits):
        for j, b in enumerate(row):
            if b is not None:
                rgba[i, j] = to_rgba(BIT_COLORS.get(b, "#ff00ff"))
                ax.text(j, i, hm.text[i][j], ha="center", va="center", fontsize=6.5,
                        color="white" if b in DARK_BITS else "black")
    ax.imshow(rgba, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(hm.blocks)), hm.blocks, fontsize=7)
    ax.set_yticks(range(len(hm.roles)), hm.roles, fontsize=8)
    ax.set_xticks([j - 0.5 for j in range(1, len(hm.blocks))], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, len(hm.roles))], minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    if last:
        ax.set_xlabel("block (transformer layer index); head = layers outside the blocks",
                      fontsize=8)
    ax.set_title(title, fontsize=9, loc="left")
    return {b for row in hm.bits for b in row if b is not None}


def bits(study: Study, configs: list[tuple[str, object]]) -> bytes:
    """One bit-allocation heatmap per chosen config, stacked, one shared legend."""
    maps = [(heatmap(t.layers, study.blocks), caption(study, kind, t)) for kind, t in configs]
    heights = [0.28 * len(hm.roles) + 1.0 for hm, _ in maps]
    width = max(8.0, 0.34 * max(len(hm.blocks) for hm, _ in maps) + 2.5)
    fig = Figure(figsize=(width, sum(heights) + 1.3), layout="constrained")
    axes = fig.subplots(len(maps), 1, squeeze=False, height_ratios=heights)[:, 0]
    used: set[float] = set()
    for k, (ax, (hm, title)) in enumerate(zip(axes, maps)):
        used |= _heat_axes(ax, hm, title, last=k == len(maps) - 1)
    fig.legend(handles=[Patch(facecolor=BIT_COLORS.get(b, "#ff00ff"), edgecolor="0.5",
                              label=bit_label(b)) for b in sorted(used)],
               loc="outside lower center", ncols=len(used), fontsize=8,
               title="colour = bits per weight, number in cell = group size", title_fontsize=8)
    fig.suptitle(f"Bit allocation — {study.name}: {study.meta.get('model', '?')} · "
                 f"{study.meta.get('task', '?')}\n{study.meta.get('protocol', '')}",
                 fontsize=10, x=0.01, ha="left")
    return _png(fig, HEAT_DPI)
