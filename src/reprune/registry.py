"""One registry class for every extension point (criteria, reconstructions, recoveries).

An entry is a frozen dataclass with a ``name``; a package's ``__init__`` creates the registry and then
imports every module beside it (:func:`import_submodules`), so a new entry is one new file whose
decorator registers it. Lookups happen once, in :meth:`reprune.config.PruneConfig.resolve`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    name: str


Entry = TypeVar("Entry", bound=Named)


class Registry(Generic[Entry]):
    """Entries of one kind by name; an unknown name is an error that lists the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> Entry:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"Unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def import_submodules(package: str, path: list[str]) -> None:
    """Import every module of ``package`` (its ``__path__`` is ``path``) for their registrations."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda info: info.name):
        importlib.import_module(f"{package}.{info.name}")
