"""Settings of RLEdit (editors/rledit.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import TrainedEditorConfig
from editors.configs.ultraedit import UltraEditConfig


@dataclass
class RLEditConfig(UltraEditConfig, TrainedEditorConfig):
    # the authors' config/editor/rledit.yaml and config/model/llama-3-instruct.yaml, gpt-j.yaml: gate and up
    # projections of blocks 22-30 of LLaMA-3-8B's 32; GPT-J's fc_out of 22-27 of 28. Unset layers take the
    # preset's blocks at the same relative depth (SmolLM2, 30 blocks: gates and ups of 20-28)
    in_layers: list[int] | None = field(default=None, metadata={
        "help": "blocks whose FFN input projection (a gated FFN's gate) is rewritten; unset: the LLaMA-3 preset's "
                "22-30 of 32 at the same relative depth (gated FFNs; none otherwise)"})
    up_layers: list[int] | None = field(default=None, metadata={
        "help": "blocks whose gated FFN's up projection is rewritten; unset: the LLaMA-3 preset's 22-30 of 32 at the "
                "same relative depth (gated FFNs only)"})
    out_layers: list[int] | None = field(default=None, metadata={
        "help": "blocks whose FFN output projection is rewritten; unset: none for a gated FFN, else the GPT-J "
                "preset's 22-27 of 28 at the same relative depth"})
    lr: float = field(default=1e-6, metadata={
        "help": "initial step size of the network's value gradient, learned per rewritten layer (the preset: 1e-6)"})
    rank: int = field(default=1024, metadata={"help": "rank of the network's residual blocks (the preset: 1024)"})
    hidden_blocks: int = field(default=4, metadata={"help": "residual blocks of the network (the preset: 4)"})
    trajectory: int = field(default=200, metadata={
        "help": "edit steps in one training trajectory, the model kept edited along it (the authors' num_seq: 200)"})
    back_depth: int = field(default=10, metadata={
        "help": "steps of the trajectory each step's losses look back over, this one included (the preset: 10)"})
    time_decay: float = field(default=0.95, metadata={
        "help": "weight gamma^j of the losses of the step j back (the preset: 0.95)"})
    locality_weight: float = field(default=0.6, metadata={"help": "weight of the locality KL (the preset's loc_coef)"})
    reg_weight: float = field(default=1e-4, metadata={
        "help": "weight of the squared norm of each step's update (the preset's reg_coef)"})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "the network's accumulated gradient is clipped to this norm after every step (the preset: 1)"})
    equivalents: int = field(default=1, metadata={
        "help": "equivalent inputs in a training step's generalisation loss (zsRE's rephrase: 1; the edit's own "
                "prompt where an example has none)"})
    train_epochs: int = field(default=1, metadata={
        "help": "training trajectories; the network takes one Adam step after each (the preset: 1)"})
    train_lr: float = field(default=1e-5, metadata={
        "help": "Adam's learning rate for the network (the preset's meta_lr)"})
    train_batch_size: int = field(default=1, metadata={
        "help": "edits per step of a training trajectory (the stream edits one at a time; the authors' n_edits: "
                "20-100)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1 or self.hidden_blocks < 0 or self.trajectory < 1 or self.back_depth < 1:
            raise ValueError("editor.rank, trajectory, back_depth >= 1 and editor.hidden_blocks >= 0 are required")
        if not 0 < self.time_decay <= 1 or self.locality_weight < 0 or self.reg_weight < 0 or self.max_grad_norm <= 0:
            raise ValueError("editor.time_decay in (0, 1], locality_weight, reg_weight >= 0 and max_grad_norm > 0 "
                             "are required")
        if self.equivalents < 0:
            raise ValueError(f"editor.equivalents must be >= 0, got {self.equivalents}")


EDITORS.register("rledit", "editors.rledit:RLEditEditor", RLEditConfig,
                 "RLEdit: UltraEdit's closed-form update through a hypernetwork trained over trajectories of "
                 "sequential edits")
