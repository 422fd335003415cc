"""A registry of named plug-ins whose code is imported on first use.

`names` (what the CLI lists, validates and documents) costs no import; `get(name)`
imports the entry's module and returns its object. So the command line checks a
backend, a sampler or a quantization method by name before torch is imported, and
adding a plug-in is one new file plus one line here in its package's registry:

    BACKENDS = Registry("serving backend", {"hqq": "autoq.serve.hqq:BACKEND", ...})
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Mapping

from .errors import UserError


_NONE = object()


class Registry:
    def __init__(self, what: str, entries: Mapping[str, str]):
        self.what, self.entries = what, dict(entries)
        self._loaded: dict[str, Any] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def check(self, name: str, flag: str | None = None) -> str:
        """`name`, or one sentence naming the choices."""
        if name not in self.entries:
            where = f"{flag} {name!r}" if flag else f"{self.what} {name!r}"
            raise UserError(f"{where} is not one of {', '.join(self.entries)}.")
        return name

    def get(self, name: str, default: Any = _NONE) -> Any:
        """The registered object (its module imported on first use); `default` for a
        name not registered, when given."""
        if name not in self.entries and default is not _NONE:
            return default
        if name not in self._loaded:
            module, _, attr = self.entries[self.check(name)].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __setitem__(self, name: str, obj: Any) -> None:
        """Register an object made at run time (a user's own plug-in, a test's stand-in)."""
        self.entries.setdefault(name, f"<registered at run time>:{name}")
        self._loaded[name] = obj

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((n, self.get(n)) for n in self.entries)

    def values(self) -> Iterator[Any]:
        return (self.get(n) for n in self.entries)
