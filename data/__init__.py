"""Datasets register themselves on import."""

from data import counterfact, facts, fever, hf, jsonmap, trex, zsre  # noqa: F401
