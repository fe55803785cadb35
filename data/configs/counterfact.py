"""Settings of the `counterfact` dataset (data/counterfact.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from data.configs.base import DataConfig

LAYOUTS = ("auto", "rome", "easyedit")


@dataclass
class CounterFactConfig(DataConfig):
    path: str | None = field(default=None, metadata={"help": "the CounterFact JSON file (either layout)"})
    layout: str = field(default="auto", metadata={"help": "auto (by the fields) | rome | easyedit"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")


DATASETS.register("counterfact", "data.counterfact:CounterFactDataModule", CounterFactConfig,
                  "CounterFact counterfactual edits (ROME's or EasyEdit's file): SR, GR on paraphrases, Loc")
