"""The hypernetwork editors' shared settings (KE-style, MEND-style)."""

from __future__ import annotations

from dataclasses import dataclass, field

from editors.configs.base import TrainedEditorConfig


@dataclass
class HypernetConfig(TrainedEditorConfig):
    blocks: int = field(default=3, metadata={"help": "edit the FFN projections of the last N blocks (all, if fewer)"})
    edit_lr: float = field(default=1e-4, metadata={"help": "initial step size of the update (learned per layer)"})
    equivalents: int = field(default=2, metadata={"help": "equivalent inputs in the edit loss of a training edit"})
    locality: int = field(default=4, metadata={"help": "other D'train inputs in the locality term of a training edit"})
    train_epochs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1 or self.edit_lr <= 0 or self.equivalents < 0 or self.locality < 1:
            raise ValueError("editor.blocks >= 1, editor.edit_lr > 0, editor.equivalents >= 0, editor.locality >= 1")
