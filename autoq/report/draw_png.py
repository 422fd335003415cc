"""PNG pictures (matplotlib, Agg, no pyplot state) of the panels (panels.py) and heatmaps.
Each function returns the PNG bytes; the caller writes them atomically."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter  # noqa: E402

from ..quant import FP  # noqa: E402
from .data import Study  # noqa: E402
from .heatmap import Heatmap, heatmap  # noqa: E402
from .labels import place  # noqa: E402
from .panels import Panel  # noqa: E402
from .rows import caption  # noqa: E402
from .style import BIT_COLORS, DARK_BITS, bit_label, study_style  # noqa: E402

DPI = 150
HEAT_DPI = 110     # the heatmaps are large already


def _png(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


ONESHOT_STYLE = {"sensitivity": ("X", (0, (5, 2)), "0.30"),
                 "single-layer-kl": ("P", (0, (1, 1.5)), "0.30")}
BOX = dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8)
OFF_AXES = "▲▼◀▶ beyond the axes: drawn at the edge, its value in the label"
REF_MARKERS = {(0, 0): "D", (1, 0): "^", (-1, 0): "v", (0, 1): ">", (0, -1): "<"}


def _dots(ax, pts, predicted: bool, color: str, marker: str, **kw):
    """Markers of one kind: filled, or hollow when their speed is predicted."""
    if not pts:
        return
    face = kw.pop("face", color)
    edge = kw.pop("edge", color if predicted else "black")
    ax.scatter([p.at[0] for p in pts], [p.at[1] for p in pts], marker=marker,
               facecolors="white" if predicted else face, edgecolors=edge, **kw)


def figure(panel: Panel) -> Figure:
    """Quality against one axis: every trial faint, the front as a staircase (the
    report split: the plans in size order), best.json as a star, the target as a
    dashed line, the one-shot plans as two grey series, uniform configs and fp as
    labelled reference points (far ones at the edge). Where speeds are predicted,
    their markers are hollow."""
    fig = Figure(figsize=(12.5, 6.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)                   # measuring labels needs a renderer
    ax = fig.add_subplot()
    speed = panel.axis.speed is not None
    what = panel.axis.speed or "speed"            # what may be predicted: speed or latency
    labels: list[tuple[float, float, str, dict]] = []   # (x, y, text, style)
    for i, s in enumerate(panel.series):
        color, marker, _ = study_style(i)
        name = s.study.name
        for predicted in (False, True):
            pts = [p for p in s.trials if p.predicted == predicted]
            tail = (f", predicted {what}" if predicted else f", measured {what}") \
                if speed and any(p.predicted for p in s.trials) else ""
            _dots(ax, pts, predicted, color, marker, s=18 if predicted else 16,
                  alpha=0.55 if predicted else 0.25, linewidths=0.8 if predicted else 0,
                  label=f"{name}: all trials ({len(pts)}){tail}")
        if s.front:
            ax.plot(*zip(*s.stairs), color=color, lw=1.6, alpha=0.9,
                    ls="-" if panel.split == "search" else (0, (4, 2)))
            for predicted in (False, True):
                pts = [p for p in s.front if p.predicted == predicted]
                tail = f" (predicted {what})" if predicted else ""
                _dots(ax, pts, predicted, color, marker, s=50, linewidths=1.1 if predicted
                      else 0.6, zorder=3, label=f"{name}: {s.front_label} ({len(pts)}){tail}")
        if s.best is not None:
            b = s.best
            ax.scatter([b.x], [b.y], marker="*", s=280, zorder=5, linewidths=1.0,
                       facecolors="white" if b.predicted else color, edgecolors="black",
                       label=f"{name}: best.json" + (f" (predicted {what})" if b.predicted
                                                     else ""))
            labels.append((b.x, b.y, f"best.json ({name})" if len(panel.series) > 1
                           else "best.json", {"fontsize": 8, "color": color}))
        if s.study.target is not None:
            ax.axhline(s.study.target, color=color, ls="--", lw=1.2,
                       label=f"{name}: target {s.study.goal.text()}")
    shot_labels: dict[tuple[float, float], list[str]] = {}
    for o in panel.oneshots:
        marker, ls, color = ONESHOT_STYLE.get(o.signal, ("x", "-.", "0.3"))
        ax.plot([p.at[0] for p in o.points], [p.at[1] for p in o.points], color=color, ls=ls,
                lw=1.1, zorder=2)
        for predicted in (False, True):
            pts = [p for p in o.points if p.predicted == predicted]
            _dots(ax, [p for p in pts if p.off == (0, 0)], predicted, color, marker, s=60,
                  linewidths=0.9, zorder=4, edge=color if predicted else "white",
                  label=f"{o.label} ({', '.join(p.label for p in pts)} bits)"
                        + (f" (predicted {what})" if predicted else ""))
            for off, edge_marker in REF_MARKERS.items():   # beyond the axes: at the edge
                _dots(ax, [p for p in pts if (all(p.off) if off == (0, 0)
                                              else p.off[::-1] == off)], predicted, color,
                      edge_marker,
                      s=44, linewidths=0.9, zorder=4, edge="white")
        for p in o.points:
            shot_labels.setdefault(p.at, []).append(f"{p.label}: {p.note}" if p.note
                                                    else p.label)
    for (x, y), texts in shot_labels.items():
        labels.append((x, y, "/".join(dict.fromkeys(texts)), {"fontsize": 7, "color": "0.25"}))
    uniform, named = [r for r in panel.refs if r.label != FP], False
    for key, marker in REF_MARKERS.items():
        refs = [r for r in uniform if (r.off, r.off_x) == key or
                (key == (0, 0) and r.off and r.off_x)]
        if refs:
            ax.scatter([r.shown_x for r in refs], [r.shown_y for r in refs], marker=marker,
                       s=44, facecolors="0.8", edgecolors="0.1", linewidths=1.0, zorder=4,
                       label=None if named else "uniform HQQ nbits:group (head not quantized)")
            named = True
    fps = [r for r in panel.refs if r.label == FP]
    if fps:
        ax.scatter([r.shown_x for r in fps], [r.shown_y for r in fps], marker="H", s=110,
                   color="black", zorder=4, label="fp (unquantized)")
    for r in sorted(panel.refs, key=lambda r: not (r.off or r.off_x)):
        labels.insert(0 if (r.off or r.off_x) else len(labels),
                      (r.shown_x, r.shown_y, r.text, {"fontsize": 8, "color": "0.1"}))
    ax.set_xlim(*panel.x_range)
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
    handles, names = ax.get_legend_handles_labels()
    if any(r.off or r.off_x for r in panel.refs) or \
            any(p.note for o in panel.oneshots for p in o.points):
        handles.append(Line2D([], [], ls="none", marker="^", mfc="0.8", mec="0.1"))
        names.append(OFF_AXES)
    if speed and panel.note:
        handles += [Line2D([], [], ls="none", marker="o", mfc="0.4", mec="black", label=""),
                    Line2D([], [], ls="none", marker="o", mfc="white", mec="0.4", label="")]
        names += [f"filled: measured {what}", f"hollow: {what} predicted by the latency model"]
    fig.legend(handles, names, loc="outside right upper", fontsize=7.5, framealpha=0.9,
               markerscale=0.75)
    if panel.caveat:
        fig.supxlabel(panel.caveat, fontsize=8.5, color="#a01010")
    _label(fig, ax, labels)
    return fig


def _label(fig: Figure, ax, labels: list[tuple[float, float, str, dict]]) -> None:
    """Place the labels where they overlap neither each other, nor markers (labels.py)."""
    if not labels:
        return
    fig.draw_without_rendering()           # the layout is final: pixel positions hold
    renderer = fig.canvas.get_renderer()
    data = ax.transData
    obstacles = []
    for c in ax.collections:       # every marker, as big as it is drawn
        sizes = c.get_sizes()
        for i, (x, y) in enumerate(data.transform(c.get_offsets())):
            r = max(4.0, math.sqrt(sizes[i % len(sizes)] if len(sizes) else 36) / 2
                    * fig.dpi / 72)
            obstacles.append((x - r, y - r, x + r, y + r))
    anchors, sizes = [], []
    for x, y, text, style in labels:
        probe = ax.text(0, 0, text, bbox=BOX, **style)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        anchors.append(tuple(data.transform((x, y))))
        sizes.append((ext.width + 6, ext.height + 4))
    bounds = tuple(ax.bbox.extents)
    for (x, y, text, style), (px, py), box in zip(labels, anchors,
                                                  place(anchors, sizes, obstacles, bounds)):
        far = math.hypot((box[0] + box[2]) / 2 - px, (box[1] + box[3]) / 2 - py) > 45
        t = ax.annotate(text, (x, y), xytext=(box[0] + 3 - px, box[1] + 2 - py),
                        textcoords="offset pixels", ha="left", va="bottom", zorder=6,
                        annotation_clip=False, bbox=BOX,
                        arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0,
                                        shrinkB=4) if far else None, **style)
        t.set_in_layout(False)


def pareto(panel: Panel) -> bytes:
    return _png(figure(panel))


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
