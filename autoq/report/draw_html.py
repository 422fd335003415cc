"""One self-contained HTML page (plotly, plotly.js inline, works offline): the
Pareto plots with a hover that shows each trial's plan, the Pareto tables and
the bit-allocation heatmaps of every Pareto config."""

from __future__ import annotations

import html
import math
from typing import Sequence

import plotly.graph_objects as go

from ..quant import FP
from . import gap
from ..metrics import fmt
from .data import Study, Trial, best_trial, groups, number, source_of
from .heatmap import heatmap, plan_summary
from .panels import Panel
from .rows import (baseline_rows, best_note, caption, chosen, columns, counts, front_rows,
                   plan_files, split_notes)
from .style import BIT_COLORS, bit_label, study_style

ONESHOT_SYMBOL = {"sensitivity": "x", "single-layer-kl": "cross"}
ONESHOT_DASH = {"sensitivity": "dash", "single-layer-kl": "dot"}

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}h2{margin-top:2em;border-bottom:1px solid #ddd}
.meta{color:#555}"""


def _trial_hover(study: Study, t: Trial | None, plans: dict[int, str], split: str = "search",
                 head: str = "") -> str:
    m = t.metrics if t else {}
    lines = [head or f"<b>{html.escape(study.name)}</b> · trial {t.number} ({t.origin})"]
    for metric in study.metrics_shown:
        for sp in ("search", "report"):
            if (q := study.quality(m, sp, metric)) is not None:
                lines.append(f"{fmt(metric, q, True)} ({sp} split)")
    if (f := number(m.get("fraction"))) is not None and f < 1:
        lines[1] += f" (estimated from {f:.0%} of the data)"
    for key in ("size_mib", "bits_per_weight", study.speed_key, "latency_ms"):
        if (v := number(m.get(key))) is not None:
            predicted = key in (study.speed_key, "latency_ms") and source_of(m, key) == \
                "predicted"
            lines.append(fmt(key, v) + (" (predicted)" if predicted else ""))
    if t is not None:
        lines.append(plan_summary(t.layers))
        plan = study.plan_path(t.plan) if t.plan else plans.get(t.number)
        if plan:
            lines.append(f"plan: {html.escape(plan)}")
    return "<br>".join(lines)


def _open(symbol: str, predicted: bool) -> str:
    return f"{symbol}-open" if predicted else symbol


def _markers(fig: go.Figure, pts, name: str, group: str, color: str, symbol: str, size: int,
             hover, speed: str | None, **marker) -> None:
    """One trace per kind: filled = measured speed (latency), open = predicted (said in the
    legend); `speed` names which, None on the other axes."""
    for predicted in (False, True):
        sel = [p for p in pts if p.predicted == predicted]
        if not sel:
            continue
        tail = f" (predicted {speed})" if predicted and speed else ""
        fig.add_scatter(x=[p.at[0] for p in sel], y=[p.at[1] for p in sel], mode="markers",
                        name=f"{name}{tail}", legendgroup=group,
                        marker=dict(color=color, symbol=_open(symbol, predicted), size=size,
                                    **marker),
                        hovertext=[hover(p) for p in sel], hoverinfo="text")


def pareto(panel: Panel) -> go.Figure:
    fig = go.Figure()
    speed = panel.axis.speed          # "speed", "latency" or None
    for i, s in enumerate(panel.series):
        color, _, symbol = study_style(i)
        name, plans = s.study.name, plan_files(s.study)
        hover = lambda p, s=s, plans=plans: _trial_hover(s.study, p.trial, plans, panel.split)
        _markers(fig, s.trials, f"{name}: all trials ({len(s.trials)})", name, color, symbol, 7,
                 hover, speed, opacity=0.35)
        if s.front:
            fig.add_scatter(x=[x for x, _ in s.stairs], y=[y for _, y in s.stairs], mode="lines",
                            line=dict(color=color, width=2,
                                      dash="solid" if panel.split == "search" else "dash"),
                            hoverinfo="skip", showlegend=False, legendgroup=name)
            _markers(fig, s.front, f"{name}: {s.front_label} ({len(s.front)})", name, color,
                     symbol, 11, hover, speed, line=dict(color="black", width=1))
        if s.best is not None:
            _markers(fig, [s.best], f"{name}: best.json", name, color, "star", 20, hover, speed,
                     line=dict(color="black", width=1))
        if s.study.target is not None:
            fig.add_hline(y=s.study.target, line=dict(color=color, dash="dash", width=1.5),
                          annotation_text=f"{name}: target {s.study.goal.text()}",
                          annotation_position="top left")
    for o in panel.oneshots:
        symbol = ONESHOT_SYMBOL.get(o.signal, "x")
        fig.add_scatter(x=[p.at[0] for p in o.points], y=[p.at[1] for p in o.points],
                        mode="lines",
                        line=dict(color="#555", width=1.2, dash=ONESHOT_DASH.get(o.signal)),
                        hoverinfo="skip", showlegend=False, legendgroup=o.label)
        _markers(fig, o.points, o.label, o.label, "#555", symbol, 10,
                 lambda p, o=o: f"<b>{html.escape(o.label)}</b> at {p.label} bits/weight<br>"
                                f"{fmt(panel.metric, p.y, True)} ({panel.split} split)<br>"
                                f"{html.escape(panel.x_label)}: {p.x:.4g}"
                                + (" (predicted)" if p.predicted else "")
                                + ("<br>beyond the axes: drawn at the edge" if p.note else ""),
                 speed)
    for group, name in (([r for r in panel.refs if r.label != FP],
                         "uniform HQQ nbits:group (head not quantized)"),
                        ([r for r in panel.refs if r.label == FP], "fp (unquantized)")):
        if group:
            fig.add_scatter(
                x=[r.shown_x for r in group], y=[r.shown_y for r in group], mode="markers+text",
                text=[r.text for r in group], textposition="top right", name=name,
                marker=dict(symbol=[_ref_symbol(r) for r in group], size=10 if name[0] == "u"
                            else 13, color="#bbb" if name[0] == "u" else "black",
                            line=dict(width=1.5, color="#111")),
                hovertext=[f"{'uniform ' if r.label != FP else ''}{r.label}<br>"
                           f"{fmt(panel.metric, r.y, True)} ({panel.split} split)<br>"
                           f"{html.escape(panel.x_label)}: {r.x:.4g}" for r in group],
                hoverinfo="text")
    notes = [t for t in (*panel.subtitle.split("\n"), panel.note) if t]
    if panel.caveat:
        notes.append(f"<span style='color:#a01010'>{html.escape(panel.caveat)}</span>")
    fig.update_layout(
        title=dict(text="<br>".join([html.escape(panel.title)] + [
            f"<sup>{t if t.startswith('<span') else html.escape(t)}</sup>" for t in notes])),
        xaxis_title=panel.x_label, yaxis_title=panel.y_label, template="plotly_white",
        height=640, hoverlabel=dict(align="left"), margin=dict(t=120),
        xaxis=dict(range=list(panel.x_range)),
        yaxis=dict(type="log" if panel.log_y else "linear",
                   range=[math.log10(v) for v in panel.y_range] if panel.log_y
                   else list(panel.y_range),
                   tickformat=".1%" if panel.metric == "accuracy" else None))
    return fig


def _ref_symbol(r) -> str:
    if r.label == FP:
        return "hexagon"
    return {(1, 0): "triangle-up", (-1, 0): "triangle-down", (0, 1): "triangle-right",
            (0, -1): "triangle-left"}.get((r.off, r.off_x), "diamond")


def bits(study: Study, kind: str, t: Trial) -> go.Figure:
    hm = heatmap(t.layers, study.blocks)
    levels = sorted({b for row in hm.bits for b in row if b is not None})
    n = len(levels)
    scale = []
    for k, b in enumerate(levels):  # one flat step of colour per bit width
        color = BIT_COLORS.get(b, "#ff00ff")
        scale += [(k / n, color), ((k + 1) / n, color)]
    hover = [[f"{name}<br>{bit_label(b)}, group {txt}" if name else ""
              for name, b, txt in zip(*rows)] for rows in zip(hm.names, hm.bits, hm.text)]
    fig = go.Figure(go.Heatmap(
        z=[[levels.index(b) if b is not None else None for b in row] for row in hm.bits],
        x=hm.blocks, y=hm.roles, text=hm.text, texttemplate="%{text}", textfont=dict(size=9),
        customdata=hover, hovertemplate="%{customdata}<extra></extra>", colorscale=scale,
        zmin=-0.5, zmax=n - 0.5, xgap=1, ygap=1,
        colorbar=dict(title="bits", tickvals=list(range(n)),
                      ticktext=[bit_label(b) for b in levels])))
    fig.update_layout(title=html.escape(caption(study, kind, t)), template="plotly_white",
                      height=120 + 26 * len(hm.roles),
                      xaxis=dict(type="category", title="block (head = layers outside the blocks)"),
                      yaxis=dict(type="category", autorange="reversed"))
    return fig


def _table(cols: list[str], rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values())
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(studies: Sequence[Study], panels: Sequence[Panel]) -> str:
    """The whole page, one section per protocol group; plotly.js sits once in <head>, so
    the file works offline."""
    from plotly.offline import get_plotlyjs

    from .tables import PATHS, SPEEDS

    parts = []
    for g in groups(studies):
        p = g.protocol
        parts.append(f"<h2>{html.escape(f'{p.model} · {p.task} — {p.text()}')}</h2>")
        parts += [_div(pareto(panel)) for panel in panels if panel.group == g.stem]
        parts += [f"<h3>{html.escape(s.name)}</h3>" + _study_html(s) for s in g.studies]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>autoq report</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>autoq report</h1><p class='meta'>Studies: "
            f"{html.escape(', '.join(s.name for s in studies))}. Hover a point to see its plan; "
            f"click a legend entry to hide it. Open markers: speed (latency) predicted by the "
            f"latency model; filled: measured. {html.escape(PATHS)} {html.escape(SPEEDS)}</p>"
            f"{''.join(parts)}</body></html>")


def _div(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _study_html(s: Study) -> str:
    best = best_trial(s)
    notes = "<br>".join(html.escape(n) for n in split_notes(s))
    meta = (f"<p class='meta'>model {html.escape(str(s.meta.get('model', '?')))} · task "
            f"{html.escape(str(s.meta.get('task', '?')))} · objective: quality × {s.objective}"
            f"<br>{notes}<br>target {s.goal.text()} · "
            f"trials: {counts(s)} · source <code>{html.escape(s.source)}</code></p>")
    out = [meta, "<h4>Pareto configs (★ = best.json)</h4>", _table(columns(s), front_rows(s))]
    if best is not None:
        out.append(f"<p>best: {html.escape(best_note(s) or '')} — "
                   f"{html.escape(plan_summary(best.layers))}</p>")
    if s.oneshot:
        out += [f"<h4>{html.escape(gap.title(s))}</h4>",
                f"<p class='meta'>{html.escape(gap.explain(s))}</p>",
                _table(gap.columns(s), gap.rows(s)),
                "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in gap.summary(s))
                + "</ul>"]
    if s.baselines:
        out += ["<h4>Uniform reference points</h4>", _table(columns(s), baseline_rows(s))]
    configs = chosen(s)
    if configs:
        out.append("<h4>Bit allocation (colour = bits, number = group size)</h4>")
        out += [_div(bits(s, kind, t)) for kind, t in configs]
    return "".join(out)
