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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.registry import EDITORS
from benchmark.types import EditorData
from editors.base import EditorConfig
from editors.datastore import BACKENDS
from editors.retrieval import RetrievalEditor


@dataclass
class KNNLMConfig(EditorConfig):
    epsilon: float = field(default=0.1, metadata={"help": "largest nearest-key distance whose value is used"})
    normalize: bool = field(default=True, metadata={"help": "unit-length keys (epsilon on a 0..2 scale)"})
    source: str = field(default="edits", metadata={"help": "edits | edits+train: what fills the datastore"})
    backend: str = field(default="auto", metadata={"help": "auto | torch | faiss nearest-neighbour search"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.epsilon >= 0:
            raise ValueError(f"editor.epsilon must be >= 0, got {self.epsilon}")
        if self.source not in ("edits", "edits+train"):
            raise ValueError(f"editor.source must be edits or edits+train, got {self.source!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"editor.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


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


EDITORS.register("knn_lm", KNNLMEditor, KNNLMConfig,
                 "kNN-LM datastore of edits: the nearest key within epsilon overrides the answer")
