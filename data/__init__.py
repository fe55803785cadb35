"""Datasets register by name (their configs in `data.configs`; a DataModule's module is imported
when it is first built)."""

from data import configs  # noqa: F401
