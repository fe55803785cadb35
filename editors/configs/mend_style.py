"""Settings of the MEND-style editor (editors/mend_style.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.hypernet import HypernetConfig


@dataclass
class MENDConfig(HypernetConfig):
    rank: int = field(default=1920, metadata={"help": "rank of the network's residual blocks (capped at width)"})
    hidden_layers: int = field(default=1, metadata={"help": "residual blocks of the gradient network"})
    edit_weight: float = field(default=0.1, metadata={"help": "c_edit: weight of the edit loss"})
    locality_weight: float = field(default=1.0, metadata={"help": "c_loc: weight of the locality KL"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1 or self.hidden_layers < 1 or self.edit_weight <= 0 or self.locality_weight < 0:
            raise ValueError("editor.rank, hidden_layers >= 1, edit_weight > 0 and locality_weight >= 0 are required")


EDITORS.register("mend_style", "editors.mend_style:MENDEditor", MENDConfig,
                 "MEND-style (not the published MEND): a trained network maps each edit's rank-1 gradient "
                 "factors to a weight update")
