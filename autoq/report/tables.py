"""The Pareto-config and one-shot tables in the terminal (rich) and the whole report as
Markdown, studies grouped by protocol."""

from __future__ import annotations

from typing import Sequence

from . import gap
from .data import Study, best_trial, groups
from .heatmap import plan_summary
from .rows import (PREDICTED, baseline_rows, best_note, columns, counts, front_rows,
                   split_notes)

PATHS = ("Plan paths are relative to the folder `autoq report` ran in (absolute when outside "
         "it): paste them into `autoq apply`.")
SPEEDS = (f"Speeds and latencies marked \"{PREDICTED.strip()}\" come from the latency model; "
          "the others were measured.")


def terminal(studies: Sequence[Study], console=None) -> None:
    from rich.console import Console

    console = console or Console()
    for s in (s for g in _announced(groups(studies), console) for s in g.studies):
        console.print(_rich(columns(s), front_rows(s), "\n".join(split_notes(s)),
                            f"{s.name}: Pareto configs — {s.meta.get('model', '?')} · "
                            f"{s.meta.get('task', '?')} ({counts(s)}; {s.goal.text()})"))
        if s.oneshot:
            cols = gap.columns(s)       # the front plan by its trial (the table above)
            console.print(_rich(cols, gap.rows(s), "\n".join(gap.summary(s)),
                                f"{s.name}: {gap.title(s)}", drop=(cols[4],)))
    if any("(predicted)" in v for s in studies for r in front_rows(s) for v in r.values()):
        console.print(SPEEDS)


def _rich(cols: list[str], rows: list[dict], caption: str, title: str,
          drop: tuple[str, ...] = ()):
    """A rich table whose cells are never cut: a plan's path (for pasting) and a one-shot
    plan's label on one line, the rest wrapped when the terminal is narrow. `drop`:
    columns left out."""
    from rich.table import Column, Table

    def column(c: str) -> Column:
        if c in ("plan", "one-shot plan"):
            return Column(c, no_wrap=True, min_width=max(len(str(r[c])) for r in rows or [{c: c}]))
        return Column(c, overflow="fold")

    keep = [c for c in cols if c not in drop]
    table = Table(*map(column, keep), title=title, caption=caption)
    for row in rows:
        table.add_row(*(str(row[c]) for c in keep))
    return table


def _announced(gs, console):
    """The groups, each announced by a rule naming its protocol as it comes."""
    for g in gs:
        p = g.protocol
        console.rule(f"{p.model} · {p.task} — {p.text()}")
        yield g


def _md_table(cols: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    return "\n".join(lines)


def markdown(studies: Sequence[Study], pictures: dict[str, list[tuple[str, str]]],
             heatmaps: dict[str, str]) -> str:
    """The report as Markdown: per protocol group its pictures (`pictures`: group stem ->
    (caption, file)), then per study its tables and bit-allocation picture."""
    out = ["# autoq report", "", PATHS, SPEEDS, ""]
    for g in groups(studies):
        p = g.protocol
        out += [f"## {p.model} · {p.task} — {p.text()}", ""]
        out += [line for caption, file in pictures.get(g.stem, [])
                for line in (f"![{caption}]({file})", "")]
        for s in g.studies:
            out += _study(s, heatmaps.get(s.name))
    return "\n".join(out)


def _study(s: Study, heatmap: str | None) -> list[str]:
    best = best_trial(s)
    out = [f"### {s.name}", "",
           f"- model: {s.meta.get('model', '?')}, task: {s.meta.get('task', '?')}, objective: "
           f"quality × {s.objective}",
           *(f"- {line}" for line in split_notes(s)),
           f"- target: {s.goal.text()}; trials: {counts(s)}",
           f"- source: `{s.source}`"]
    if best is not None:
        out.append(f"- best: {best_note(s)} ({plan_summary(best.layers)})")
    out += ["", "#### Pareto configs (★ = best.json)", ""]
    rows = front_rows(s)
    out += [_md_table(columns(s), rows) if rows else "_no complete trials yet_", ""]
    if s.oneshot:
        out += [f"#### {gap.title(s)}", "", gap.explain(s), "",
                _md_table(gap.columns(s), gap.rows(s)), ""]
        out += [f"- {line}" for line in gap.summary(s)] + [""]
    if s.baselines:
        out += ["#### Uniform reference points", "",
                _md_table(columns(s), baseline_rows(s)), ""]
    if heatmap:
        out += [f"![bit allocation of {s.name}]({heatmap})", ""]
    return out
