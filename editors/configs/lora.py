"""Settings of LoRA fine-tuning (editors/lora.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig

ROLES = ("q", "k", "v", "o", "qkv", "ffn_in", "ffn_up", "ffn_out")
FORMS = ("adalora", "lora")


@dataclass
class LoraConfig(SteppedEditorConfig):
    # EasyEdit's preset for LLaMA-3-8B (hparams/LoRA/llama3-8b.yaml): AdaLoRA on q and v of every block,
    # rank 8, alpha 32, Adam lr 5e-3 for 70 steps per request
    max_steps: int = field(default=70, metadata={"help": "Adam steps per edit (num_steps)"})
    targets: list[str] = field(default_factory=lambda: ["q", "v"], metadata={
        "help": f"roles of the adapted linear layers in each block: {', '.join(ROLES)}"})
    layers: list[int] = field(default_factory=list, metadata={"help": "blocks adapted; empty: every block"})
    rank: int | None = field(default=None, metadata={
        "help": "rank r of each adapter; unset: 12 for adalora (peft's AdaLoRA starts at init_r = 12 and ignores "
                "the `r: 8` EasyEdit passes), 8 for lora"})
    alpha: float = field(default=32.0, metadata={"help": "lora_alpha: the update is scaled by alpha / r"})
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate"})
    form: str = field(default="adalora", metadata={
        "help": "adalora: B (A * E) x with E zero-initialised and the orthogonality penalty, as EasyEdit's LLaMA "
                "presets run peft's AdaLoRA (no rank allocation) | lora: B A x with B zero-initialised (its Qwen2.5 "
                "preset)"})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "weight of AdaLoRA's |A A^T - I| + |B^T B - I|"})
    stop_when_correct: bool = field(default=False, metadata={
        "help": "stop once the edit holds (EasyEdit always runs max_steps)"})
    seed: int = field(default=0, metadata={"help": "seed of the adapters' initial values"})

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [t for t in self.targets if t not in ROLES]
        if not self.targets or unknown:
            raise ValueError(f"editor.targets must name roles among {', '.join(ROLES)}, got {self.targets}")
        if self.form not in FORMS:
            raise ValueError(f"editor.form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if self.rank is None:
            self.rank = 12 if self.form == "adalora" else 8
        if self.rank < 1 or self.alpha <= 0 or self.lr <= 0 or self.orth_reg_weight < 0:
            raise ValueError("editor.rank >= 1, editor.alpha > 0, editor.lr > 0 and editor.orth_reg_weight >= 0 "
                             "are required")


EDITORS.register("lora", "editors.lora:LoraEditor", LoraConfig,
                 "LoRA fine-tuning: low-rank adapters on attention (or FFN) projections, trained on each edit")
