"""Settings of the `counterfact` dataset (data/counterfact.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from data.configs.base import DataConfig, check_source

LAYOUTS = ("auto", "rome", "easyedit")


@dataclass
class CounterFactConfig(DataConfig):
    path: str | None = field(default=None, metadata={
        "help": "the CounterFact JSON file (either layout); unset: fetched from data.url"})
    layout: str = field(default="auto", metadata={"help": "auto (by the fields) | rome | easyedit"})
    url: str = field(default="https://rome.baulab.info/data/dsets/counterfact.json", metadata={
        "help": "where the published file is fetched when data.path is not set (ROME's published data; MEMIT's "
                "and AlphaEdit's dsets/*.py fetch the same file from memit.baulab.info); cached and verified"})
    sha256: str | None = field(default=None, metadata={
        "help": "the fetched file's SHA-256; unset: pinned on first download and checked at every later use"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.url, self.sha256)
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")


DATASETS.register("counterfact", "data.counterfact:CounterFactDataModule", CounterFactConfig,
                  "CounterFact counterfactual edits (ROME's or EasyEdit's file): SR, GR on paraphrases, Loc")
