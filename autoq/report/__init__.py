"""`autoq report`: Pareto fronts, bit-allocation heatmaps and tables of autoq studies.

    load.py       study folders / Optuna storages -> Study (read-only)
    data.py       the study, its protocol group, its plans on either split (pure)
    panels.py     plot panels (pure)     rows.py, gap.py  table rows (pure)
    heatmap.py    bit-allocation matrices (pure)   labels.py  label placement (pure)
    draw_png.py   matplotlib pictures        draw_html.py  one plotly page
    tables.py     rich terminal table, Markdown report
    baselines.py  --baselines: evaluate missing uniform reference points

Every picture is rendered in memory first; only when all of them rendered are
the files written, each one atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..io import write_atomic
from .data import Study, slug
from .panels import panels as make_panels   # the module keeps its name
from .rows import chosen

FORMATS = ("png", "html", "md")
HEATMAPS_PER_PNG = 5     # best + evenly spread Pareto configs; the HTML page shows all

__all__ = ["FORMATS", "parse_formats", "render", "slug", "write"]


def parse_formats(text: str) -> list[str]:
    wanted = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise UserError(f"--format {text!r}: use a comma-separated list of "
                        f"{', '.join(FORMATS)}, e.g. png,html.")
    return wanted


def render(studies: Sequence[Study], formats: Sequence[str]) -> dict[str, bytes | str]:
    """File name -> contents of every output, nothing written yet."""
    from . import tables

    the_panels = make_panels(studies)
    files: dict[str, bytes | str] = {}
    pictures: dict[str, list[tuple[str, str]]] = {}   # group stem -> (caption, file)
    heatmaps: dict[str, str] = {}                      # study name -> file
    if "png" in formats:
        from . import draw_png

        for p in the_panels:
            files[f"{p.file_stem}.png"] = draw_png.pareto(p)
            pictures.setdefault(p.group, []).append((p.title, f"{p.file_stem}.png"))
        for s in studies:
            configs = chosen(s, limit=HEATMAPS_PER_PNG - 1)
            if configs:
                name = f"{slug(s.name)}-bits.png"
                files[name] = draw_png.bits(s, configs)
                heatmaps[s.name] = name
    if "html" in formats:
        from . import draw_html

        files["report.html"] = draw_html.page(studies, the_panels)
    if "md" in formats:
        files["report.md"] = tables.markdown(studies, pictures, heatmaps)
    return files


def write(studies: Sequence[Study], out: Path, formats: Sequence[str]) -> list[Path]:
    files = render(studies, formats)
    for name, content in files.items():
        write_atomic(out / name, content)
    return [out / name for name in files]
