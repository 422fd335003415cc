"""Where the shipped declarative files live (search_spaces/, eval/).

From a source checkout they sit at the repository root; an installed wheel maps
them into the package as autoq/_data/<name>.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    for candidate in (ROOT / name, Path(__file__).resolve().parent / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"autoq is missing its {name}/ folder; reinstall it.")
