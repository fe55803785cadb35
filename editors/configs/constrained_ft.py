"""Settings of constrained fine-tuning (editors/constrained_ft.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig


@dataclass
class ConstrainedFTConfig(SteppedEditorConfig):
    block: str = field(default="last", metadata={"help": "block index 0..L-1 | embeddings | last | all"})
    delta: float = field(default=1e-3, metadata={"help": "bound on ||theta - theta_0||; inf is plain fine-tuning",
                                                  "infinite": "no bound: plain fine-tuning"})
    norm: str = field(default="linf", metadata={"help": "linf (element-wise clamp) | l2 (ball over all tuned weights)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    mix: str = field(default="ftm", metadata={"help": "ftm: modified facts only | fta: plus as many unmodified"})
    epochs: int = field(default=10, metadata={"help": "loop.mode=batch: passes over the facts' forms (Zhu et al.: 10)"})
    batch_size: int = field(default=128, metadata={"help": "loop.mode=batch: forms per minibatch (Zhu et al.: 128)"})
    mode: str = field(default="fast", metadata={
        "help": "fast: a block (or run of last blocks) trains on a fixed batch (stream, FTM): its input is recorded "
                "once per edit and each step runs only what follows (exact) | naive: the full forward each step"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.block = str(self.block)
        if self.block not in ("all", "last", "embeddings") and not self.block.lstrip("-").isdigit():
            raise ValueError(f"editor.block must be a block index, embeddings, last or all, got {self.block!r}")
        if not self.delta > 0:  # also rejects nan
            raise ValueError(f"editor.delta must be positive (inf for no bound), got {self.delta}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"editor.norm must be linf or l2, got {self.norm!r}")
        if self.mix not in ("ftm", "fta"):
            raise ValueError(f"editor.mix must be ftm or fta, got {self.mix!r}")
        if self.lr <= 0:
            raise ValueError(f"editor.lr must be positive, got {self.lr}")
        if self.mode not in ("fast", "naive"):
            raise ValueError(f"editor.mode must be fast or naive, got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("editor.epochs and editor.batch_size must be at least 1")


EDITORS.register("constrained_ft", "editors.constrained_ft:ConstrainedFTEditor", ConstrainedFTConfig,
                 "fine-tuning under ||theta - theta_0|| <= delta by projected Adam (Zhu et al. 2020)")
