"""The typer app and what every command shares: `command` (a user's mistake becomes one
sentence and exit code 2, Ctrl-C exit code 130), `table` and `emit` (print a result as
a table, or as one JSON object with --json)."""

from __future__ import annotations

import functools
import json
from collections import Counter

import typer

from .. import __version__, progress
from ..errors import UserError
from .options import Command, OneLineErrors

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Find, apply and compare per-layer mixed-precision HQQ quantization.")


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"autoq {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", metavar="", is_eager=True,
                                              callback=show_version,
                                              help="Print the version and exit.")):
    """Find, apply and compare per-layer mixed-precision HQQ quantization."""


def command(fn):
    """Register `fn` as a command; a UserError becomes one sentence and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*a, **kwargs):
        progress.ENABLED = not kwargs.get("quiet", False) and not kwargs.get("as_json", False)
        progress.quiet_libraries(not progress.ENABLED)
        try:
            return fn(*a, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
    return app.command(cls=Command)(wrapper)


def table(title: str, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title, show_header=False)
    for key, value in rows.items():
        if isinstance(value, dict) and len(value) > 8:   # per layer: how many of each
            value = dict(Counter(map(str, value.values())).most_common())
        out.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(out)


def emit(as_json: bool, title: str, result: dict) -> None:
    if as_json:
        typer.echo(json.dumps(result))
    else:
        table(title, result)
