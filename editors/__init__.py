"""Editors register themselves on import."""

from editors import constrained_ft, ft, ke, knn_lm, mend, sera, tpatcher  # noqa: F401
