"""autoq command line: one function per command; the docstring is the help.

Each command checks every argument first (autoq/cli/args.py: one sentence, exit code
2, before torch or a model is imported), then calls the library and prints. The
library never imports this package.

| module    | commands                      |
|-----------|-------------------------------|
| model.py  | models, eval, apply           |
| search.py | search                        |
| report.py | report                        |
| run.py    | generate, predict, export     |
"""

from __future__ import annotations

from . import model, report, run, search  # noqa: F401  (each registers its commands)
from .app import app


def main() -> None:
    app(prog_name="autoq")
