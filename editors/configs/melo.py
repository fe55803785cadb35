"""Settings of MELO (editors/melo.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig


@dataclass
class MeloConfig(SteppedEditorConfig):
    # EasyEdit's only preset (hparams/MELO/gpt2-xl.yaml): the router at block 35 of 48 (c_fc), LoRA
    # on c_fc of blocks 36 and 37, blocks of rank 2 (350 of them), radius 0.5, 50 steps at lr 1e-3
    max_steps: int = field(default=50, metadata={"help": "Adam steps per edit (num_iter)"})
    router_layer: int | None = field(default=None, metadata={
        "help": "block whose FFN input projection's output is the routing key; unset: the preset's depth "
                "(block 35 of GPT-2 XL's 48), with a block after it"})
    lora_layers: list[int] = field(default_factory=list, metadata={
        "help": "blocks whose FFN input projection carries the LoRA blocks; empty: the two after the router "
                "(the preset: 36, 37)"})
    rank_per_block: int = field(default=2, metadata={"help": "rank of each edit's LoRA block (num_rank_per_block)"})
    blocks: int = field(default=350, metadata={
        "help": "LoRA blocks at most (num_block): one per edit; the run stops with a clear error past it"})
    init_radius: float = field(default=0.5, metadata={"help": "radius of a new cluster of keys (init_radius)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (edit_lr), halved every lr_step steps"})
    lr_step: int = field(default=20, metadata={"help": "StepLR step size (melo.py: step_size 20, gamma 0.5)"})
    stop_when_correct: bool = field(default=False, metadata={
        "help": "stop once the edit holds (the published code always runs max_steps)"})
    seed: int = field(default=0, metadata={"help": "seed of the LoRA blocks' initial values"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank_per_block < 1 or self.blocks < 1 or self.lr_step < 1:
            raise ValueError("editor.rank_per_block, editor.blocks and editor.lr_step must be at least 1")
        if not self.init_radius > 0 or not self.lr > 0:
            raise ValueError(f"editor.init_radius and editor.lr must be > 0, got {self.init_radius}, {self.lr}")


EDITORS.register("melo", "editors.melo:MeloEditor", MeloConfig,
                 "MELO: one LoRA block per edit, chosen by a database of edit keys clustered GRACE's way")
