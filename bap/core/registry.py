"""A small name -> object registry, the pattern used for backbones, targets, backends and bench devices."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bap.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects; unknown names fail with the list of valid ones.

    Args:
        kind: what is registered, used in error messages (``"backbone"``, ``"target"``).
        flag: the CLI flag that selects an entry, used in the fix hint.
    """

    def __init__(self, kind: str, flag: str | None = None):
        self.kind = kind
        self.flag = flag or f"--{kind}"
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = o
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        """Look ``name`` up, raising a :class:`ConfigError` that lists the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise ConfigError(f"unknown {self.kind} {name!r}", f"choose one of: {valid} ({self.flag})") from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in registration order."""
        return list(self._entries.items())
