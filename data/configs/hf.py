"""Settings of the `hf` dataset (data/hf.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from data.configs.jsonmap import JsonMapConfig


@dataclass
class HFConfig(JsonMapConfig):
    path: str | None = field(default=None, metadata={
        "help": "hub name, local folder, a json/jsonl/csv/parquet file, or a save_to_disk folder"})
    split: str = field(default="train", metadata={"help": "split read as the records"})
    test_split: str | None = field(default=None, metadata={"help": "split read as D_test (default: carved out)"})


DATASETS.register("hf", "data.hf:HFDataModule", HFConfig,
                  "any Hugging Face `datasets` source (hub, folder, json/csv/parquet, save_to_disk), fields mapped")
