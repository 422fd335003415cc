"""Progress bars (with ETA) on stderr; the CLI turns them on, library code just calls track()."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")
ENABLED = False


def track(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    if not ENABLED:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)


def say(message: str) -> None:
    if ENABLED:
        print(message, file=sys.stderr, flush=True)


def quiet_libraries(quiet: bool) -> None:
    """Silence the libraries' own bars too (or let them show): the hub's downloads,
    transformers' loading bars and plain tqdm bars such as the GGUF conversion's.
    Imports nothing: environment variables for libraries not imported yet (tqdm reads
    TQDM_DISABLE when it is imported), transformers' switch if it already is."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1" if quiet else "0"
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    if "transformers.utils.logging" in sys.modules:
        hf_logging = sys.modules["transformers.utils.logging"]
        (hf_logging.disable_progress_bar if quiet else hf_logging.enable_progress_bar)()
