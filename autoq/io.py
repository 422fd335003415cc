"""Files: atomic writes (a reader never sees a half-written result file), and where the
shipped declarative files live (search_spaces/, eval/)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_atomic(path: str | os.PathLike, data: str | bytes, sync: bool = True) -> None:
    """Write `data` to `path` via a temporary file in the same folder + rename.
    `sync=False` skips fsync (caches: a lost entry is just recomputed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give a normal file's mode
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process umask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def resource_dir(name: str) -> Path:
    """A shipped folder (search_spaces/, eval/): at the repository root in a source
    checkout; an installed wheel maps it into the package as autoq/_data/<name>."""
    for candidate in (ROOT / name, Path(__file__).resolve().parent / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"autoq is missing its {name}/ folder; reinstall it.")
