"""Settings of UltraEdit (editors/ultraedit.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import EditorConfig

TOKENS = ("ans", "mask")


@dataclass
class UltraEditConfig(EditorConfig):
    # the authors' preset for LLaMA-3-8B-Instruct (XiaojieGu/UltraEdit config/model/llama-3-instruct.yaml, the
    # zsRE / WikiBigEdit / UltraEditBench modules; EasyEdit's hparams/UltraEdit/llama3-8b-instruct.yaml the same):
    # gate projections of blocks 11-15, up projections of blocks 18-24 of 32; for an FFN that is not gated, their
    # GPT-J preset (config/model/gpt-j.yaml): fc_out of blocks 18-26 of 28. Unset layers take the preset's blocks
    # at the same relative depth (SmolLM2, 30 blocks: gates 10-14, ups 16-22)
    in_layers: list[int] | None = field(default=None, metadata={
        "help": "blocks whose FFN input projection (a gated FFN's gate) is rewritten; unset: the LLaMA-3 preset's "
                "11-15 of 32 at the same relative depth (gated FFNs; none otherwise)"})
    up_layers: list[int] | None = field(default=None, metadata={
        "help": "blocks whose gated FFN's up projection is rewritten; unset: the LLaMA-3 preset's 18-24 of 32 at the "
                "same relative depth (gated FFNs only)"})
    out_layers: list[int] | None = field(default=None, metadata={
        "help": "blocks whose FFN output projection is rewritten; unset: none for a gated FFN, else the GPT-J "
                "preset's 18-26 of 28 at the same relative depth"})
    lr: float = field(default=1e-6, metadata={
        "help": "step size of the normalised value gradient (every preset: 1e-6)"})
    token: str = field(default="ans", metadata={
        "help": "ans: keys and gradients at the answer's positions (the authors' config/editor/ultraedit.yaml) | "
                "mask: at every real position (EasyEdit's presets)"})
    chunk_size: int = field(default=10, metadata={
        "help": "requests per forward in a batch of edits (loop.mode=batch; the authors' dataset.batch_size)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token not in TOKENS:
            raise ValueError(f"editor.token must be one of {', '.join(TOKENS)}, got {self.token!r}")
        given = [getattr(self, k) for k in ("in_layers", "up_layers", "out_layers") if getattr(self, k) is not None]
        if len(given) == 3 and not any(given):
            raise ValueError("editor.in_layers, up_layers, out_layers: at least one module to rewrite is required")
        for key in ("in_layers", "up_layers", "out_layers"):
            if getattr(self, key) is not None and len(set(getattr(self, key))) != len(getattr(self, key)):
                raise ValueError(f"editor.{key} lists a block twice: {getattr(self, key)}")
        if self.lr <= 0 or self.chunk_size < 1:
            raise ValueError("editor.lr > 0 and editor.chunk_size >= 1 are required")


EDITORS.register("ultraedit", "editors.ultraedit:UltraEditEditor", UltraEditConfig,
                 "UltraEdit: training-free closed-form updates from normalised key/gradient pairs, with lifelong "
                 "normalisation statistics")
