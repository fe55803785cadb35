"""Settings of T-Patcher (editors/tpatcher.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import EDITORS
from editors.configs.base import SteppedEditorConfig

ACTIVATION_NAMES = ("relu", "gelu", "silu")
RECIPES = ("seqedit", "official")
MEMORY_LOSSES = ("l_m1+l_m2", "l_m1", "kl", "none")
STEPS = ("autograd", "closed")
# recipe -> defaults of the fields left unset: (max_steps, memory_weight, value_scale, mode)
RECIPE_DEFAULTS = {"seqedit": (300, 10.0, 5.0, "fast"), "official": (2000, 5.0, 10.0, "naive")}


@dataclass
class TPatcherConfig(SteppedEditorConfig):
    recipe: str = field(default="seqedit", metadata={
        "help": "seqedit | official: the published code's edit (8 dropout copies in train mode, weight decay, "
                "clipping, plateau schedule, label smoothing, its stop rule on a D_val memory, memory of edited "
                "examples only; editors/tpatcher_official.py), naive mode"})
    max_steps: int | None = field(default=None, metadata={
        "help": "steps per edit at most; unset: 300 (seqedit recipe) or 2,000 (official, utils.py:33)"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the patch"})
    activation_weight: float = field(default=1.0, metadata={"help": "a: weight of the activation loss"})
    memory_weight: float | None = field(default=None, metadata={
        "help": "m: weight of the memory losses; unset: 10 (the paper, both tasks) or 5 (official: mlc, utils.py:72)"})
    topk: int = field(default=1000, metadata={"help": "k of S(.; k) in the memory losses"})
    topk_activation: int = field(default=5, metadata={"help": "k_a of S(-A; k_a) for several patches"})
    activation: str = field(default="auto", metadata={"help": "auto | relu | gelu | silu: patch activation"})
    beta: float | None = field(default=None, metadata={"help": "memory activation ceiling (None: by activation)"})
    gamma: float | None = field(default=None, metadata={"help": "margin of l_m2 (None: by activation)"})
    l_m2_sign: str = field(default="margin", metadata={"help": "margin (published code, +gamma) | paper (-gamma)"})
    value_scale: float | None = field(default=None, metadata={
        "help": "initial scale of the patch value; unset: n_p = 5 with v' ~ U(0,1) (paper) or a = 10 with v ~ N(0,1) "
                "(official: amplify_con, patch.py:239-266)"})
    max_patches: int = field(default=5, metadata={"help": "patches per example at most (generation)"})
    layer: int = field(default=-1, metadata={"help": "index of the patched FFN layer (-1: last)"})
    mode: str | None = field(default=None, metadata={
        "help": "fast (cached upstream) | naive (full forward each step); unset: fast, or naive for recipe=official "
                "(dropout makes a cache invalid)"})
    step: str = field(default="autograd", metadata={
        "help": "autograd | closed: closed writes the patch's gradient out and runs autograd on the model's tail "
                "alone (editors/tpatcher_step.py; the same steps up to float rounding, no faster on CPU: "
                "docs/performance.md); it serves mode=fast with memory_loss l_m1+l_m2, l_m1 or none"})
    memory_update: bool = field(default=True, metadata={"help": "add the stream's queries to the memory"})
    stop_margin: float = field(default=0.0, metadata={"help": "stop when the target leads by this logit margin"})
    stop_below_beta: bool = field(
        default=True, metadata={"help": "also require the patch to be silent on the memory before stopping"}
    )
    min_steps: int = field(default=0, metadata={"help": "optimise at least this many steps (published code: 100)"})
    memory_loss: str = field(default="l_m1+l_m2", metadata={
        "help": "l_m1+l_m2 (the paper) | the ablations of its Table 3: l_m1 (w/o l_m2), kl (KL to the original "
                "model on memory examples instead, as the code's memory_loss=klN), none (w/o memory loss)"})
    kl_examples: int = field(default=512, metadata={
        "help": "memory_loss=kl: memory-pool examples sampled per edit for the KL (the code's klN, as FT+KL's "
                "loc_num 512)"})
    memory_refresh: int = field(default=1, metadata={
        "help": "steps between full memory scans choosing the top-k entries; in between only the candidate "
                "rows are scanned (1: every step, exact)"})
    memory_candidates: int = field(default=4, metadata={"help": "candidate rows kept between scans, times topk"})
    memory_scan: str = field(default="auto", metadata={
        "help": "fp32 | int8 | auto: int8 scans an int8 copy of the memory under a proven error bound and rescores "
                "in fp32 only the rows it cannot rule out (the same top-k as fp32); auto: on CPU, whichever of the "
                "two is faster, timed over the first scans of the run's edits (with memory_reuse: fp32)"})
    memory_reuse: bool = field(default=True, metadata={
        "help": "on CPU, bound each step's memory scores from the previous step's (the keys moved by D: a score "
                "moved by c.D and at most |M_i - c| |D|) and rescore in fp32 only the rows that can hold a top-k "
                "entry; a full scan where over a quarter of the rows remain (the same top-k; false: scan every step)"})
    memory_basis: int = field(default=32, metadata={
        "help": "with memory_reuse, the memory's leading principal directions (from the first rows it holds) in "
                "which each step's move of the scores is computed rather than bounded, so only the rows' remainder "
                "outside them is bounded (the same top-k; 0: bound every direction)"})

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"editor.recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        defaults = RECIPE_DEFAULTS[self.recipe]
        for key, default in zip(("max_steps", "memory_weight", "value_scale", "mode"), defaults):
            if getattr(self, key) is None:
                setattr(self, key, default)
        if self.recipe == "official" and self.mode != "naive":
            raise ValueError("editor.recipe=official trains in train mode (dropout), where the fast path's cache is "
                             "invalid; use editor.mode=naive (the default there)")
        super().__post_init__()
        if self.activation not in ("auto", *ACTIVATION_NAMES):
            raise ValueError(f"editor.activation must be auto, relu, gelu or silu, got {self.activation!r}")
        if self.mode not in ("fast", "naive"):
            raise ValueError(f"editor.mode must be fast or naive, got {self.mode!r}")
        if self.l_m2_sign not in ("margin", "paper"):
            raise ValueError(f"editor.l_m2_sign must be margin or paper, got {self.l_m2_sign!r}")
        if self.lr <= 0 or self.topk < 1 or self.topk_activation < 1 or self.max_patches < 1:
            raise ValueError("editor.lr > 0 and editor.topk, topk_activation, max_patches >= 1 are required")
        if self.memory_scan not in ("auto", "fp32", "int8"):
            raise ValueError(f"editor.memory_scan must be auto, fp32 or int8, got {self.memory_scan!r}")
        if self.memory_basis < 0:
            raise ValueError(f"editor.memory_basis must be >= 0, got {self.memory_basis}")
        if self.memory_loss not in MEMORY_LOSSES:
            raise ValueError(f"editor.memory_loss must be one of {', '.join(MEMORY_LOSSES)}, got {self.memory_loss!r}")
        if self.recipe == "official" and self.memory_loss not in ("l_m1+l_m2", "none"):
            raise ValueError("editor.recipe=official runs the published memory loss (l_m1+l_m2) or none")
        if self.step not in STEPS:
            raise ValueError(f"editor.step must be one of {', '.join(STEPS)}, got {self.step!r}")
        if self.step == "closed" and (self.mode != "fast" or self.memory_loss == "kl"):
            raise ValueError("editor.step=closed serves mode=fast with memory_loss l_m1+l_m2, l_m1 or none; "
                             "use editor.step=autograd for this setting")
        if self.kl_examples < 1:
            raise ValueError("editor.kl_examples must be at least 1")
        if self.memory_refresh < 1 or self.memory_candidates < 1:
            raise ValueError("editor.memory_refresh and editor.memory_candidates must be at least 1")
        if min(self.activation_weight, self.memory_weight, self.stop_margin, self.min_steps) < 0:
            raise ValueError("editor.activation_weight, memory_weight, stop_margin and min_steps must be >= 0")


EDITORS.register("tpatcher", "editors.tpatcher:TPatcherEditor", TPatcherConfig,
                 "Transformer-Patcher: trained key/value neurons added to the last FFN (Huang et al. 2023)")
