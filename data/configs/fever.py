"""Settings of the `fever` dataset (data/fever.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from data.configs.base import BackTranslationConfig, DataConfig


@dataclass
class FeverConfig(DataConfig):
    train_file: str = field(default="fever-train-kilt.jsonl", metadata={"help": "KILT train file in data.path"})
    dev_file: str = field(default="fever-dev-kilt.jsonl", metadata={"help": "KILT dev file (D_test) in data.path"})
    back_translation: BackTranslationConfig = field(default_factory=BackTranslationConfig)


DATASETS.register("fever", "data.fever:FeverDataModule", FeverConfig,
                  "FEVER fact-checking claims (KILT files), T-Patcher splits")
