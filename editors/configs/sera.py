"""Settings of SERA (editors/sera.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import BACKENDS, TrainedEditorConfig


@dataclass
class SERAConfig(TrainedEditorConfig):
    encoder: str = field(default="minilm-l6", metadata={"help": "encoder of the scope classifier (registered model)"})
    threshold: float = field(default=0.5, metadata={"help": "in-scope probability above which the cache answers"})
    backend: str = field(default="auto", metadata={"help": "auto | torch | faiss search of the cache"})
    train_lr: float = 2e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold < 1:
            raise ValueError(f"editor.threshold must be in (0, 1), got {self.threshold}")
        if self.backend not in BACKENDS:
            raise ValueError(f"editor.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


EDITORS.register("sera", "editors.sera:SERAEditor", SERAConfig,
                 "SERAC with direct return: a trained scope classifier over a cache of edits")
