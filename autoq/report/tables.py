"""The Pareto-config table in the terminal (rich) and the whole report as Markdown."""

from __future__ import annotations

from typing import Sequence

from .data import Study
from .heatmap import plan_summary
from .rows import baseline_rows, best_trial, counts, front_rows, headers


def terminal(studies: Sequence[Study], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for s in studies:
        cols = headers(s)
        table = Table(*cols, title=f"{s.name}: Pareto configs — {s.meta.get('model', '?')} · "
                                   f"{s.meta.get('task', '?')} ({counts(s)}; {s.goal.text()})")
        for row in front_rows(s):
            table.add_row(*row.values())
        console.print(table)


def _md_table(cols: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    return "\n".join(lines)


def markdown(studies: Sequence[Study], images: dict[str, str]) -> str:
    """The report as Markdown; `images` maps a picture's caption to its file name."""
    out = ["# autoq report", ""]
    for caption, file in images.items():
        out += [f"![{caption}]({file})", ""]
    for s in studies:
        best = best_trial(s)
        out += [f"## {s.name}", "",
                f"- model: {s.meta.get('model', '?')}, task: {s.meta.get('task', '?')}",
                f"- protocol: {s.meta.get('protocol', '?')}",
                f"- target: {s.goal.text()}; trials: {counts(s)}",
                f"- source: `{s.source}`"]
        if best is not None:
            out.append(f"- best: {best.plan or f'trial {best.number}'} "
                       f"({plan_summary(best.layers)})")
        out += ["", "### Pareto configs (★ = best)", ""]
        rows = front_rows(s)
        out += [_md_table(headers(s), rows) if rows else "_no complete trials yet_", ""]
        if s.baselines:
            out += ["### Uniform reference points", "",
                    _md_table(headers(s), baseline_rows(s)), ""]
    return "\n".join(out)
