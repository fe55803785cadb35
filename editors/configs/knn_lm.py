"""Settings of kNN-LM (editors/knn_lm.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import BACKENDS, EditorConfig


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


EDITORS.register("knn_lm", "editors.knn_lm:KNNLMEditor", KNNLMConfig,
                 "kNN-LM datastore of edits: the nearest key within epsilon overrides the answer")
