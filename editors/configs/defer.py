"""Settings of DEFER (editors/defer.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig


@dataclass
class DeferConfig(SteppedEditorConfig):
    # the GRACE authors' preset (Thartvigsen/GRACE grace/config/editor/defer.yaml)
    max_steps: int = field(default=100, metadata={"help": "Adam steps per edit (n_iter; always all of them)"})
    layer: int | None = field(default=None, metadata={
        "help": "block whose FFN output the adaptor decides on; unset: editor=grace's block (the published code "
                "wraps the layer GRACE wraps)"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate of the adaptor (edit_lr)"})
    threshold: float = field(default=0.5, metadata={"help": "the deferral gate's value from which the adaptor answers"})
    stop_when_correct: bool = field(default=False, metadata={
        "help": "stop once the edit holds (the published code always runs max_steps)"})
    seed: int = field(default=0, metadata={"help": "seed of the adaptor's initial weights"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr > 0 or not 0 < self.threshold < 1:
            raise ValueError("editor.lr > 0 and 0 < editor.threshold < 1 are required")


EDITORS.register("defer", "editors.defer:DeferEditor", DeferConfig,
                 "DEFER: a learned gate at one FFN decides per input whether a small trained adaptor answers instead")
