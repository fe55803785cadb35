"""One small registry type shared by editors, datasets and models.

Names are the public handles users type on the command line (`editor=tpatcher`), so the registry
refuses duplicates and badly formed names instead of silently replacing an entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]*$")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; its message lists the valid choices."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the plain line.
        return str(self.args[0])


class Entry(Generic[T]):
    """A registered name: its config class, and its target (an editor class, a DataModule, a model
    builder), given as the object or as "module:attribute", imported on first use so that
    registering and reading configs import no torch."""

    def __init__(self, name: str, target: T | str, config_class: type, description: str):
        self.name, self._target, self.config_class, self.description = name, target, config_class, description

    @property
    def target(self) -> T:
        if isinstance(self._target, str):
            module, attribute = self._target.split(":")
            self._target = getattr(import_module(module), attribute)
        return self._target


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, target: T | str, config_class: type, description: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case letters, digits, '_', '-', '.'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if not description or "\n" in description:
            raise ValueError(f"{self.kind} {name!r} needs a one-line description")
        self._entries[name] = Entry(name, target, config_class, description)

    @contextmanager
    def added(self, name: str, target: T, config_class: type, description: str) -> Iterator[None]:
        """`name` registered for the with-block only: test pieces never join the public registry."""
        self.register(name, target, config_class, description)
        try:
            yield
        finally:
            del self._entries[name]

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: Any) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries[name] for name in self.names())


EDITORS: Registry = Registry("editor")
DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")
