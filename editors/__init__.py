"""Editors register by name (their configs in `editors.configs`; an editor's module is imported
when it is first built)."""

from editors import configs  # noqa: F401
