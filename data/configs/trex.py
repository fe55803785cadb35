"""Settings of the `trex` dataset (data/trex.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from data.configs.base import DataConfig


@dataclass
class TrexConfig(DataConfig):
    relations: list[str] | None = field(default=None, metadata={"help": "relation ids (default: every P*.jsonl)"})
    modify: int = field(default=32, metadata={"help": "facts to modify (the edit stream)"})
    form: str = field(default="causal", metadata={"help": "causal (text before the mask) | masked (cloze)"})
    num_folds: int | None = 1
    train_subsample: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.modify < 1:
            raise ValueError("data.modify must be at least 1")
        if self.form not in ("causal", "masked"):
            raise ValueError(f"data.form must be causal or masked, got {self.form!r}")


DATASETS.register("trex", "data.trex:TrexDataModule", TrexConfig,
                  "LAMA T-REx cloze facts with modified objects (Zhu et al.)")
