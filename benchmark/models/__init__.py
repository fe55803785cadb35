"""Model adapters. `ModelConfig` and the registered names import no torch; the adapters and
`build_model` are imported on first use."""

from benchmark.models.config import ModelConfig

_LAZY = {"EncodedBatch": "base", "FFNCache": "base", "FFNSite": "base", "ModelAdapter": "base", "build_model": "zoo"}
__all__ = ["EncodedBatch", "FFNSite", "ModelAdapter", "ModelConfig", "FFNCache", "build_model"]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"benchmark.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'benchmark.models' has no attribute {name!r}")
