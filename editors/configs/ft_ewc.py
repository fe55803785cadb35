"""Settings of FT-EWC (editors/ft_ewc.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig


@dataclass
class FTEWCConfig(SteppedEditorConfig):
    # the GRACE authors' preset (Thartvigsen/GRACE grace/config/editor/ft_ewc.yaml, config.yaml n_iter) on
    # GPT2-XL's transformer.h[35].mlp.c_fc (config/model/gpt2xl.yaml): block 35 of 48
    max_steps: int = field(default=100, metadata={"help": "Adam steps per edit at most (n_iter); stops once it holds"})
    layer: int | None = field(default=None, metadata={
        "help": "block whose FFN input projection is fine-tuned; unset: the block at 35/48 of the depth (the "
                "GPT2-XL preset's h[35])"})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate (edit_lr)"})
    ewc_lambda: float = field(default=0.1, metadata={"help": "weight of the EWC penalty"})
    fisher_mem: int = field(default=10, metadata={
        "help": "the fold's most recent edits (this one included) whose squared gradients make the Fisher diagonal"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0 or self.ewc_lambda < 0 or self.fisher_mem < 1:
            raise ValueError("editor.lr > 0, editor.ewc_lambda >= 0 and editor.fisher_mem >= 1 are required")


EDITORS.register("ft_ewc", "editors.ft_ewc:FTEWCEditor", FTEWCConfig,
                 "FT-EWC: fine-tune one FFN projection with an elastic-weight-consolidation penalty from recent edits")
