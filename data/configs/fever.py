"""Settings of the `fever` dataset (data/fever.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from data.configs.base import BackTranslationConfig, DataConfig

LAYOUTS = ("kilt", "tpatcher")
# T-Patcher's repository cuts the KILT train file once into these (D'train, D_val, D_edit) and reads
# them with the KILT dev file (src/dataset/sme_dataset.py:41-44 at fec629a)
TPATCHER_FILES = ("fever-train.jsonl", "fever-val.jsonl", "fever-edit.jsonl")


@dataclass
class FeverConfig(DataConfig):
    layout: str = field(default="auto", metadata={
        "help": "auto (kilt where train_file is in data.path, else tpatcher) | kilt: train_file split by "
                "split_ratios | tpatcher: T-Patcher's published split files fever-{train,val,edit}.jsonl as they are"})
    train_file: str = field(default="fever-train-kilt.jsonl", metadata={"help": "KILT train file in data.path"})
    dev_file: str = field(default="fever-dev-kilt.jsonl", metadata={"help": "KILT dev file (D_test) in data.path"})
    back_translation: BackTranslationConfig = field(default_factory=BackTranslationConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in ("auto", *LAYOUTS):
            raise ValueError(f"data.layout must be auto, {', '.join(LAYOUTS)}; got {self.layout!r}")


DATASETS.register("fever", "data.fever:FeverDataModule", FeverConfig,
                  "FEVER fact-checking claims (KILT files, or T-Patcher's split files)")
