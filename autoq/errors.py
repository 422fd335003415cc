"""The one error type a user can cause, and the one way autoq says something is deprecated."""

from __future__ import annotations

import sys

REMOVED_IN = "0.3.0"   # the release that drops every deprecated spelling below
_SAID: set[str] = set()


class UserError(Exception):
    """A mistake in what the user gave us (a file, a flag, a missing download).

    The message is one sentence that names the input and the fix; the CLI prints
    it without a traceback and exits with code 2.
    """


def deprecated(old: str, new: str) -> None:
    """One line on stderr, once per process: `old` still works, `new` is the spelling to
    use, and REMOVED_IN is the release that stops reading `old`."""
    if old in _SAID:
        return
    _SAID.add(old)
    print(f"deprecated: {old} is read until autoq {REMOVED_IN}; use {new}.", file=sys.stderr,
          flush=True)
