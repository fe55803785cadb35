"""Settings of the `zsre` dataset (data/zsre.py), registered by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import DATASETS
from data.configs.base import BackTranslationConfig, DataConfig, check_source

LAYOUTS = {
    "kilt": ("structured_zeroshot-train-kilt.jsonl", "structured_zeroshot-dev-kilt.jsonl"),
    "annotated": ("structured_zeroshot-train-new_annotated_final.jsonl",
                  "structured_zeroshot-dev-new_annotated_final.jsonl"),
    "mend": ("zsre_mend_train*.json", "zsre_mend_eval*.json"),
    "tpatcher": ("zsre-train.jsonl", "zsre-dev-kilt.jsonl"),
}


@dataclass
class ZsreConfig(DataConfig):
    path: str | None = field(default=None, metadata={
        "help": "folder of the zsRE files; unset: ROME's zsre_mend_eval.json, fetched from data.url"})
    layout: str = field(default="auto", metadata={"help": "auto | kilt | annotated | mend | tpatcher"})
    target: str = field(default="gold", metadata={"help": "gold (fix mistakes) | modified (teach alt objects)"})
    split_ratios: list[float] = field(default_factory=lambda: [0.9, 0.075, 0.025])
    back_translation: BackTranslationConfig = field(default_factory=BackTranslationConfig)
    url: str = field(default="https://rome.baulab.info/data/dsets/zsre_mend_eval.json", metadata={
        "help": "where the published file is fetched when data.path is not set (ROME's published data; MEMIT's "
                "and AlphaEdit's dsets/*.py fetch the same file from memit.baulab.info); cached and verified"})
    sha256: str | None = field(default=None, metadata={
        "help": "the fetched file's SHA-256; unset: pinned on first download and checked at every later use"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self.url, self.sha256)
        if self.layout not in ("auto", *LAYOUTS):
            raise ValueError(f"data.layout must be auto, {', '.join(LAYOUTS)}; got {self.layout!r}")
        if self.target not in ("gold", "modified"):
            raise ValueError(f"data.target must be gold or modified, got {self.target!r}")


DATASETS.register("zsre", "data.zsre:ZsreDataModule", ZsreConfig,
                  "zsRE questions (KILT, KE-annotated or MEND/ROME files); gold or modified targets")
