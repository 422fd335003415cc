"""The Hugging Face hub, asked once: can this machine reach it, and what does the
local cache already hold?

Offline, transformers and timm retry every download for about a minute before
they fail. autoq decides up front instead: `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`
set, or one short TCP connect to the hub that fails, means offline. Offline, a
model in the local cache still loads (with `local_files_only`); one that is not
there is refused at once, in one sentence, before anything loads.
"""

from __future__ import annotations

import functools
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 2.0


@functools.cache
def reachable() -> bool:
    """One TCP connect to the hub endpoint (HF_ENDPOINT, default huggingface.co:443)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def offline() -> bool:
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in OFFLINE_VARS):
        return True
    return not reachable()


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached(repo_id: str, prefix: bool = False) -> bool:
    """The local hub cache has a snapshot of `repo_id` (with `prefix`: of `repo_id` or
    any `repo_id.<tag>`, the way timm names its weights)."""
    folder = "models--" + repo_id.replace("/", "--")
    root = cache_dir()
    found = [root / folder] + (sorted(root.glob(folder + ".*")) if prefix else [])
    return any(any((p / "snapshots").glob("*/*")) for p in found if p.is_dir())


def require(repo_id: str, what: str, fix: str, prefix: bool = False) -> None:
    """Refuse at once a hub download that cannot happen: offline and not cached."""
    if offline() and not cached(repo_id, prefix):
        raise UserError(f"{what} needs {repo_id} from the Hugging Face hub, which this machine "
                        f"cannot reach, and it is not in the local cache ({cache_dir()}); {fix}.")


@contextmanager
def downloads():
    """Hub downloads inside this block: offline, from the local cache only, at once
    (huggingface_hub's offline mode, which transformers and timm both ask)."""
    if not offline():
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
