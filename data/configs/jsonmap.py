"""Settings of the `jsonmap` dataset (data/jsonmap.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from benchmark.types import CLASSIFICATION, GENERATION
from data.configs.base import DataConfig

KNOWN_FIELDS = ("prompt", "target", "equivalents", "locality_prompt", "locality_answer", "relation", "id")


@dataclass
class JsonMapConfig(DataConfig):
    test_path: str | None = field(default=None, metadata={"help": "separate file for D_test"})
    task: str = field(default="generation", metadata={"help": "generation | classification"})
    fields: dict[str, str] = field(default_factory=lambda: {"prompt": "prompt", "target": "target"},
                                   metadata={"help": f"our field -> the file's dotted path; ours: {KNOWN_FIELDS}"})
    labels: dict[str, int] = field(default_factory=dict, metadata={"help": "classification: file label -> 0/1"})
    target_prefix: str = field(default=" ", metadata={"help": "put before generation targets (a space)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in (GENERATION, CLASSIFICATION):
            raise ValueError(f"data.task must be generation or classification, got {self.task!r}")
        unknown = set(self.fields) - set(KNOWN_FIELDS)
        if unknown:
            raise ValueError(f"data.fields: unknown {sorted(unknown)}; known: {', '.join(KNOWN_FIELDS)}")
        if not {"prompt", "target"} <= set(self.fields):
            raise ValueError("data.fields must map at least prompt and target")


DATASETS.register("json", "data.jsonmap:JsonMapDataModule", JsonMapConfig,
                  "any JSON/JSONL edit data, fields mapped in the config")
