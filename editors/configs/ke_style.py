"""Settings of the KE-style editor (editors/ke_style.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.hypernet import HypernetConfig


@dataclass
class KEConfig(HypernetConfig):
    lstm_hidden: int = field(default=128, metadata={"help": "hidden size of each direction of the BiLSTM"})
    margin: float = field(default=1e-3, metadata={"help": "m: bound on the locality KL in the constraint"})
    # KE's update scales the raw gradient: measured on SmolLM2 (untrained KE, 20 D_val edits),
    # 0.01 flips none, 0.1 flips 60% keeping 85% of locality, 1.0 flips 85% and breaks the model
    edit_lr: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lstm_hidden < 1 or self.margin < 0:
            raise ValueError("editor.lstm_hidden >= 1 and editor.margin >= 0 are required")


EDITORS.register("ke_style", "editors.ke_style:KEEditor", KEConfig,
                 "KE-style (not the published KnowledgeEditor): a BiLSTM-conditioned hypernetwork gates each "
                 "edit's gradient into an update")
