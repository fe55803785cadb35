"""Settings of the `facts` dataset (data/facts.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.fact_source import TEMPLATES
from benchmark.registry import DATASETS
from data.configs.base import DataConfig


@dataclass
class FactsConfig(DataConfig):
    task: str = field(default="qa", metadata={"help": "qa (language models) or claims (fact-checking)"})
    target: str = field(default="gold", metadata={"help": "gold (fix mistakes) or modified (teach new objects)"})
    relations: list[str] = field(default_factory=lambda: list(TEMPLATES), metadata={"help": "relations to use"})
    min_city_population: int = field(default=1_000_000, metadata={"help": "cities at least this large"})
    split_ratios: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    num_folds: int | None = 5
    train_subsample: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in ("qa", "claims"):
            raise ValueError(f"data.task must be qa or claims, got {self.task!r}")
        if self.target not in ("gold", "modified"):
            raise ValueError(f"data.target must be gold or modified, got {self.target!r}")
        unknown = set(self.relations) - set(TEMPLATES)
        if unknown or not self.relations:
            raise ValueError(f"data.relations: unknown {sorted(unknown)}; choose from {', '.join(TEMPLATES)}")


DATASETS.register("facts", "data.facts:FactsDataModule", FactsConfig,
                  "embedded real facts (countries, capitals, currencies, languages, cities): QA or claims")
