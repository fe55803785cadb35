"""kNN-LM as an editor (Zhu et al. 2020, App. F; Khandelwal et al. 2020).

The datastore's keys are the model's contextual embeddings where the answer is read
(`ModelAdapter.answer_embeddings`: the last block's output at [CLS], at the last prompt token, or
at the decoder's first step), its values the answers. At prediction, if the nearest key is
within `epsilon` (L2), its value replaces the model's answer (Zhu et al.'s Eq. 10); otherwise the
model answers. Built from the edits (Zhu et al.'s focus) or also from D'train (`source`).

`normalize=true` (default) scales keys to unit length, so epsilon means the same on every model
(distance in [0, 2], d^2 = 2 - 2 cos); `normalize=false` is the raw embedding distance of the
papers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.types import EditorData
from editors.configs.knn_lm import KNNLMConfig  # noqa: F401  (its config, torch-free)
from editors.retrieval import RetrievalEditor


class KNNLMEditor(RetrievalEditor):
    config_class = KNNLMConfig

    def __init__(self, config: KNNLMConfig, adapter):
        super().__init__(config, adapter, adapter.ffn_site().width)

    def keys(self, prompts: list[str]) -> Tensor:
        embeddings = self.adapter.answer_embeddings(prompts)
        return F.normalize(embeddings, dim=-1) if self.config.normalize else embeddings

    def in_scope(self, distance: Tensor) -> Tensor:
        return distance <= self.config.epsilon

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        if self.config.source == "edits+train":
            with torch.no_grad():
                self.preload(data.train)
