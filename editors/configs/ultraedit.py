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
    # gate projections of blocks 11-15, up projections of blocks 18-24 (SmolLM2 has 30 blocks, LLaMA-3-8B 32)
    max_steps: int = field(default=1, metadata={"help": "UltraEdit makes one closed-form update per edit"})
    in_layers: list[int] = field(default_factory=lambda: [11, 12, 13, 14, 15], metadata={
        "help": "blocks whose FFN input projection (a gated FFN's gate) is rewritten"})
    up_layers: list[int] = field(default_factory=lambda: [18, 19, 20, 21, 22, 23, 24], metadata={
        "help": "blocks whose gated FFN's up projection is rewritten (gated FFNs only)"})
    out_layers: list[int] = field(default_factory=list, metadata={
        "help": "blocks whose FFN output projection is rewritten (the GPT-J, Mistral and Phi-4 presets)"})
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
        if not (self.in_layers or self.up_layers or self.out_layers):
            raise ValueError("editor.in_layers, up_layers, out_layers: at least one module to rewrite is required")
        for key in ("in_layers", "up_layers", "out_layers"):
            if len(set(getattr(self, key))) != len(getattr(self, key)):
                raise ValueError(f"editor.{key} lists a block twice: {getattr(self, key)}")
        if self.lr <= 0 or self.chunk_size < 1:
            raise ValueError("editor.lr > 0 and editor.chunk_size >= 1 are required")


EDITORS.register("ultraedit", "editors.ultraedit:UltraEditEditor", UltraEditConfig,
                 "UltraEdit: training-free closed-form updates from normalised key/gradient pairs, with lifelong "
                 "normalisation statistics")
