"""Datasets register themselves on import."""

from data import counterfact, facts, fever, jsonmap, trex, zsre  # noqa: F401
