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
    """Silence transformers' own loading bars too (or let them show)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1" if quiet else "0"
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    (hf_logging.disable_progress_bar if quiet else hf_logging.enable_progress_bar)()
