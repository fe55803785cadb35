"""Settings of GRACE (editors/grace.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig


@dataclass
class GraceConfig(SteppedEditorConfig):
    max_steps: int = field(default=50, metadata={
        "help": "value training steps per edit (n_iter: 50 in EasyEdit's LLaMA presets, 200 for GPT-2 XL/GPT-J)"})
    layer: int | None = field(default=None, metadata={
        "help": "block whose FFN holds the codebook; unset: the block at 27/32 of the depth (the LLaMA-2-7B "
                "preset's layers[27]), the last block on a model of 1-6 blocks"})
    eps_init: float = field(default=1.0, metadata={"help": "radius of a new key (eps; 1.0 in every preset)"})
    lr: float = field(default=1.0, metadata={"help": "Adam learning rate of the value (edit_lr; 1.0 in every preset)"})
    eps_expand: str = field(default="coverage", metadata={
        "help": "coverage (the presets: the radius grows to reach the new query) | moving_average (the key "
                "also moves halfway to it)"})
    value_init: str = field(default="cold", metadata={
        "help": "cold (the presets: U(0, 1)) | warm (the layer's current output at the key)"})
    stop_when_correct: bool = field(default=False, metadata={
        "help": "stop training the value once the edit holds (the published code always runs max_steps)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eps_init > 0 or not self.lr > 0:
            raise ValueError(f"editor.eps_init and editor.lr must be > 0, got {self.eps_init}, {self.lr}")
        if self.eps_expand not in ("coverage", "moving_average"):
            raise ValueError(f"editor.eps_expand must be coverage or moving_average, got {self.eps_expand!r}")
        if self.value_init not in ("cold", "warm"):
            raise ValueError(f"editor.value_init must be cold or warm, got {self.value_init!r}")


EDITORS.register("grace", "editors.grace:GraceEditor", GraceConfig,
                 "GRACE codebook at one FFN: the nearest key within its radius replaces the output by a trained value")
