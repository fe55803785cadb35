"""Settings of WISE (editors/wise.py), registered by name. Defaults: EasyEdit's LLaMA-2-7B preset
(hparams/WISE/llama-7b.yaml at 14cea82), the retrieval variant (WISE-Retrieve)."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig


@dataclass
class WiseConfig(SteppedEditorConfig):
    max_steps: int = field(default=70, metadata={"help": "SGD steps of the side memory per edit (n_iter)"})
    layer: int | None = field(default=None, metadata={
        "help": "block whose FFN output projection gets the side memory; unset: the block at 27/32 of the depth "
                "(the preset's layers[27].mlp.down_proj)"})
    lr: float = field(default=1.0, metadata={"help": "SGD learning rate of the side memory (edit_lr)"})
    mask_ratio: float = field(default=0.2, metadata={
        "help": "share of the side memory's entries a knowledge shard trains (its random gradient mask)"})
    norm_constraint: float = field(default=1.0, metadata={
        "help": "each side-memory entry stays within this of the original weight"})
    act_margin: list[float] = field(default_factory=lambda: [5.0, 20.0, 10.0], metadata={
        "help": "alpha, beta, gamma of the routing margin losses"})
    act_ratio: float = field(default=0.88, metadata={
        "help": "a memory answers where its activation gap exceeds this times its edits' smallest gap"})
    save_freq: int = field(default=500, metadata={
        "help": "edits per knowledge shard: after so many the side memory is kept and a new one starts"})
    merge_freq: int = field(default=1000, metadata={
        "help": "edits between merges of the last merge_freq/save_freq shards (TIES)"})
    densities: float = field(default=0.53, metadata={"help": "TIES: share of each shard's largest changes kept"})
    weights: float = field(default=1.0, metadata={"help": "TIES: total weight of the merged shards"})
    unrelated: str = field(default="locality", metadata={
        "help": "locality: each edit's unrelated prompt is the locality pair of a memory-pool record, the i-th "
                "edit the i-th record's (the published script's loc_prompts from the training file), a pool "
                "fact where no pool record has one | pool: a memory-pool fact drawn per edit"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1 or not 0 < self.densities <= 1:
            raise ValueError("editor.mask_ratio and editor.densities must be in (0, 1]")
        if self.lr <= 0 or self.norm_constraint <= 0 or self.act_ratio <= 0:
            raise ValueError("editor.lr, editor.norm_constraint and editor.act_ratio must be > 0")
        if self.unrelated not in ("locality", "pool"):
            raise ValueError(f"editor.unrelated must be locality or pool, got {self.unrelated!r}")
        if len(self.act_margin) != 3:
            raise ValueError(f"editor.act_margin is [alpha, beta, gamma], got {self.act_margin}")
        if self.save_freq < 1 or self.merge_freq < self.save_freq or self.merge_freq % self.save_freq:
            raise ValueError("editor.merge_freq must be a multiple of editor.save_freq >= 1")


EDITORS.register("wise", "editors.wise:WiseEditor", WiseConfig,
                 "WISE: a side copy of one FFN output projection, edited in masked shards, routed by activation gap")
