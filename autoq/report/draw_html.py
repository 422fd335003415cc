"""One self-contained HTML page (plotly, plotly.js inline, works offline): the
Pareto plots with a hover that shows each trial's plan, the Pareto tables and
the bit-allocation heatmaps of every Pareto config."""

from __future__ import annotations

import html
import math
from typing import Sequence

import plotly.graph_objects as go

from ..plan import FP
from .data import Panel, Study, Trial, fmt_metric, number
from .heatmap import heatmap, plan_summary
from .rows import (baseline_rows, best_trial, caption, chosen, counts, front_rows, headers,
                   plan_files)
from .style import BIT_COLORS, bit_label, study_style

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}h2{margin-top:2em;border-bottom:1px solid #ddd}
.meta{color:#555}"""


def _trial_hover(study: Study, t: Trial, plans: dict[int, str]) -> str:
    m = t.metrics
    lines = [f"<b>{html.escape(study.name)}</b> · trial {t.number} ({t.origin})",
             fmt_metric(study.metric, study.quality(m))]
    if (f := number(m.get("fraction"))) is not None and f < 1:
        lines[-1] += f" (estimated from {f:.0%} of the data)"
    for key, fmt in (("size_mib", "{:.1f} MiB"), ("bits_per_weight", "{:.2f} bits/weight"),
                     (study.speed_key, "{:.3g} " + study.speed_key.replace("_per_s", "/s"))):
        if (v := number(m.get(key))) is not None:
            predicted = key == study.speed_key and m.get("speed_source") == "predicted"
            lines.append(fmt.format(v) + (" (predicted)" if predicted else ""))
    lines.append(plan_summary(t.layers))
    plan = t.plan or plans.get(t.number)
    if plan:
        lines.append(f"plan: {plan}")
    return "<br>".join(lines)


def pareto(panel: Panel) -> go.Figure:
    fig = go.Figure()
    for i, s in enumerate(panel.series):
        color, _, symbol = study_style(i)
        name, plans = s.study.name, plan_files(s.study)
        fig.add_scatter(x=[p.x for p in s.trials], y=[p.y for p in s.trials], mode="markers",
                        name=f"{name}: all trials ({len(s.trials)})", legendgroup=name,
                        marker=dict(color=color, symbol=symbol, size=7, opacity=0.3),
                        hovertext=[_trial_hover(s.study, p.trial, plans) for p in s.trials],
                        hoverinfo="text")
        if s.front:
            fig.add_scatter(x=[x for x, _ in s.stairs], y=[y for _, y in s.stairs], mode="lines",
                            line=dict(color=color, width=2), hoverinfo="skip", showlegend=False,
                            legendgroup=name)
            fig.add_scatter(x=[p.x for p in s.front], y=[p.y for p in s.front], mode="markers",
                            name=f"{name}: Pareto front ({len(s.front)})", legendgroup=name,
                            marker=dict(color=color, symbol=symbol, size=11,
                                        line=dict(color="black", width=1)),
                            hovertext=[_trial_hover(s.study, p.trial, plans) for p in s.front],
                            hoverinfo="text")
        if s.study.target is not None:
            fig.add_hline(y=s.study.target, line=dict(color=color, dash="dash", width=1.5),
                          annotation_text=f"{name}: target {s.study.goal.text()}",
                          annotation_position="top left")
    for group, symbol, size, name in (
            ([r for r in panel.refs if r.label != FP], None, 10,
             "uniform HQQ nbits:group (head not quantized)"),
            ([r for r in panel.refs if r.label == FP], "star", 15, "fp (unquantized)")):
        if group:
            fig.add_scatter(
                x=[r.x for r in group], y=[r.shown_y for r in group], mode="markers+text",
                text=[r.text for r in group], textposition="top right", name=name,
                marker=dict(symbol=[symbol or {0: "diamond-open", 1: "triangle-up-open",
                                               -1: "triangle-down-open"}[r.off] for r in group],
                            size=size, color="black" if symbol else "#333", line=dict(width=2)),
                hovertext=[f"{'uniform ' if r.label != 'fp' else ''}{r.label}<br>"
                           f"{fmt_metric(panel.metric, r.y)}<br>{panel.x_label}: {r.x:.4g}"
                           for r in group], hoverinfo="text")
    fig.update_layout(
        title=dict(text="<br>".join([html.escape(panel.title)] + [
            f"<sup>{html.escape(t)}</sup>" for t in (panel.subtitle, panel.note) if t])),
        xaxis_title=panel.x_label, yaxis_title=panel.y_label, template="plotly_white",
        height=600, hoverlabel=dict(align="left"),
        yaxis=dict(type="log" if panel.log_y else "linear",
                   range=[math.log10(v) for v in panel.y_range] if panel.log_y
                   else list(panel.y_range),
                   tickformat=".1%" if panel.metric == "accuracy" else None))
    return fig


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
    """The whole page; plotly.js sits once in <head>, so the file works offline."""
    from plotly.offline import get_plotlyjs

    plots = "".join(_div(pareto(p)) for p in panels)
    parts = "".join(f"<h2>{html.escape(s.name)}</h2>" + _study_html(s) for s in studies)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>autoq report</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>autoq report</h1><p class='meta'>Studies: "
            f"{html.escape(', '.join(s.name for s in studies))}. Hover a point to see its plan; "
            f"click a legend entry to hide it.</p>{plots}{parts}</body></html>")


def _div(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _study_html(s: Study) -> str:
    best = best_trial(s)
    meta = (f"<p class='meta'>model {html.escape(str(s.meta.get('model', '?')))} · task "
            f"{html.escape(str(s.meta.get('task', '?')))} · protocol "
            f"{html.escape(str(s.meta.get('protocol', '?')))}<br>target {s.goal.text()} · "
            f"trials: {counts(s)} · source <code>{html.escape(s.source)}</code></p>")
    out = [meta, "<h3>Pareto configs (★ = best)</h3>", _table(headers(s), front_rows(s))]
    if best is not None:
        out.append(f"<p>best: {html.escape(best.plan or f'trial {best.number}')} — "
                   f"{html.escape(plan_summary(best.layers))}</p>")
    if s.baselines:
        out += ["<h3>Uniform reference points</h3>", _table(headers(s), baseline_rows(s))]
    configs = chosen(s)
    if configs:
        out.append("<h3>Bit allocation (colour = bits, number = group size)</h3>")
        out += [_div(bits(s, kind, t)) for kind, t in configs]
    return "".join(out)
