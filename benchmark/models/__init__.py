from benchmark.models.base import EncodedBatch, FFNCache, FFNSite, ModelAdapter, ModelConfig
from benchmark.models.zoo import build_model

__all__ = ["EncodedBatch", "FFNSite", "ModelAdapter", "ModelConfig", "FFNCache", "build_model"]
