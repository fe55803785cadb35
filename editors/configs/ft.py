"""Settings of the fine-tuning baselines (editors/ft.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig

RECIPES = ("seqedit", "official")
CPU_KL_CHUNK = 16  # the fastest of 4, 16, 64 and one batch for SmolLM2 on a CPU (docs/editors/ft.md)
OFFICIAL_STEPS, OFFICIAL_KL_BATCH, OFFICIAL_PAST = 2000, 64, 100


@dataclass
class FTConfig(SteppedEditorConfig):
    max_steps: int | None = field(default=None, metadata={
        "help": "optimisation steps allowed per edit; unset: 100 (seqedit recipe) or 2,000 (official)"})
    layers: str = field(default="all", metadata={"help": "all | last: which parameters are fine-tuned"})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate"})
    kl_weight: float = field(default=0.0, metadata={"help": "weight of the KL term; 0 is plain FT"})
    kl_batch: int = field(default=512, metadata={"help": "memory-pool examples sampled for the KL term"})
    kl_chunk: int | None = field(default=None, metadata={
        "help": "pool examples per forward and backward of the KL term: bounds its memory (one chunk's graph at a "
                "time), the same loss and gradient (seqedit recipe); unset: 16 on a CPU, the whole sample on a GPU; "
                "on tiny models one chunk (>= kl_batch) is faster"})
    recipe: str = field(default="seqedit", metadata={
        "help": "seqedit | official: the published code's choices (see editors/ft.py and the README's recipe table)"})
    mode: str | None = field(default=None, metadata={
        "help": "fast: where only the last blocks train, their input is recorded once per edit and each step runs "
                "only them (exact) | naive: the full forward each step; unset: fast, naive for recipe=official "
                "(dropout in train mode makes a recorded prefix invalid)"})

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"editor.recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.max_steps is None:
            self.max_steps = OFFICIAL_STEPS if self.recipe == "official" else 100
        if self.mode is None:
            self.mode = "naive" if self.recipe == "official" else "fast"
        if self.mode not in ("fast", "naive"):
            raise ValueError(f"editor.mode must be fast or naive, got {self.mode!r}")
        if self.recipe == "official" and self.mode == "fast":
            raise ValueError("editor.recipe=official trains in train mode (dropout); use editor.mode=naive")
        super().__post_init__()
        if self.layers not in ("all", "last"):
            raise ValueError(f"editor.layers must be all or last, got {self.layers!r}")
        if self.lr <= 0 or self.kl_weight < 0 or self.kl_batch < 1 or (self.kl_chunk is not None and self.kl_chunk < 1):
            raise ValueError("editor.lr > 0, editor.kl_weight >= 0, editor.kl_batch >= 1 and editor.kl_chunk >= 1 "
                             "are required")


@dataclass
class FTLastConfig(FTConfig):
    layers: str = "last"


@dataclass
class FTKLAllConfig(FTConfig):
    kl_weight: float = 1.0


@dataclass
class FTKLLastConfig(FTConfig):
    layers: str = "last"
    kl_weight: float = 1.0


EDITORS.register("ft_all", "editors.ft:FTEditor", FTConfig, "fine-tune all parameters with Adam until the edit holds")
EDITORS.register("ft_last", "editors.ft:FTEditor", FTLastConfig,
                 "fine-tune the last transformer layer until the edit holds")
EDITORS.register("ft_kl_all", "editors.ft:FTEditor", FTKLAllConfig,
                 "FT(all) plus KL to the pre-edit model on memory samples")
EDITORS.register("ft_kl_last", "editors.ft:FTEditor", FTKLLastConfig,
                 "FT(last) plus KL to the pre-edit model on memory samples")
