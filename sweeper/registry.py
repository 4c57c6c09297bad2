"""Registries: one plain mapping per sweep axis, from the name a study file uses to what it builds.

Adding an activation, a model family or a figure is one `@REGISTRY.register("name")` line; every
lookup of an unknown name fails with the list of valid choices, so a typo in a study file is caught
before any trial starts.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from sweeper.errors import SweeperError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, axis: str):
        self.axis = axis
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            self.add(name, obj, *aliases)
            return obj

        return add

    def add(self, name: str, obj: T, *aliases: str) -> None:
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.axis} {name!r} is registered twice")
        self._entries[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for `name` (aliases resolve), or a SweeperError listing the choices."""
        if not isinstance(name, str):
            raise SweeperError(f"expected a name, got {name!r}; valid choices: {self.choices()}")
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise SweeperError(f"unknown {self.axis} {name!r}; valid choices: {self.choices()}")

    def __getitem__(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def choices(self) -> str:
        return ", ".join(self.names())
