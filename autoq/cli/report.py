"""`autoq report`: Pareto plots, heatmaps and tables of the studies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import progress
from . import args
from .app import command
from .options import OUTPUT, Quiet


@command
def report(sources: Optional[list[str]] = typer.Argument(
               None, metavar="STUDY_DIR_OR_STORAGE", show_default="every study under results/",
               help="Study folders, or Optuna storages (sqlite:///study.db, postgresql://..., "
               "a journal file)."),
           out: Path = typer.Option(Path("results/report"), "--out", "-o", metavar="DIR",
                                    rich_help_panel=OUTPUT,
                                    help="Folder for the pictures, report.html and report.md."),
           formats: str = typer.Option("png,html,md", "--format", metavar="png,html,md",
                                       rich_help_panel=OUTPUT, help="Comma-separated formats."),
           study: Optional[str] = typer.Option(None, "--study", metavar="NAME",
                                               help="Only the study of this name (e.g. one of "
                                               "several in a storage)."),
           baselines: bool = typer.Option(False, "--baselines", metavar="",
                                          help="First evaluate missing uniform reference points "
                                          "with each study's protocol and store them with it."),
           as_json: bool = typer.Option(False, "--json", metavar="", rich_help_panel=OUTPUT,
                                        help="Print the written files as one JSON object."),
           quiet: bool = Quiet):
    """Draw Pareto fronts (quality x size, bits/weight, speed), bit-allocation heatmaps and
    a table of the Pareto configs; safe to run while a search is still going."""
    from .. import report as rep

    wanted = rep.parse_formats(formats)
    args.folder_path("--out", out)
    from rich.console import Console

    from ..report import baselines as base
    from ..report import load, tables

    studies = load.find_studies(sources or [], study)
    if baselines:
        for s in studies:
            added = base.fill(s)
            progress.say(f"{s.name}: {len(added)} reference points added"
                         + (f" ({', '.join(added)})" if added else ""))
    written = rep.write(studies, out, wanted)
    if as_json:
        typer.echo(json.dumps({"studies": [s.name for s in studies],
                               "written": [str(p) for p in written]}))
        return
    console = Console(width=160)
    if not quiet:
        tables.terminal(studies, console)
    for path in written:
        console.print(f"wrote {path}")
