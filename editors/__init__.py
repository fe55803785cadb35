"""Editors register themselves on import."""

from editors import constrained_ft, ft, knn_lm, sera, tpatcher  # noqa: F401
