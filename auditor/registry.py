"""Name -> implementation registries for scans and defenses; unknown or duplicate names fail loudly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    summary: str
    params: dict[str, Any] = field(default_factory=dict)
    params_type: type | None = None  # a dataclass whose constructor validates the parameters
    limits: str = ""  # what the entry cannot do, measured; shown in reports next to its results
    quick: dict[str, Any] = field(default_factory=dict)  # parameters for a seconds-long run (contract tests)
    invalid: dict[str, Any] = field(default_factory=dict)  # a value its params_type must refuse (contract tests)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, summary: str, params: dict[str, Any] | None = None, params_type: type | None = None,
                 limits: str = "", quick: dict[str, Any] | None = None, invalid: dict[str, Any] | None = None):
        def decorator(factory):
            if name in self._entries:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._entries[name] = Entry(name, factory, summary, dict(params or {}), params_type, limits,
                                        dict(quick or {}), dict(invalid or {}))
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def limits(self, name: str) -> str:
        """The entry's stated limits; "" for an unknown name (a result may outlive its plugin)."""
        entry = self._entries.get(name)
        return entry.limits if entry else ""

    def unregister(self, name: str) -> None:
        del self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


SCANS = Registry("scan")
DEFENSES = Registry("defense")
