"""Editors register themselves on import."""

from editors import constrained_ft, ft, grace, ke_style, knn_lm, memit, mend_style, sera, tpatcher  # noqa: F401
