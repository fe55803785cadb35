"""The settings every dataset shares (the splits), and back-translation's. Torch-free: `seqedit
help`, `config` and `list` read every dataset's config without importing a DataModule."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Fields every dataset shares. Datasets subclass this and add their own."""

    name: str = field(default="", metadata={"help": "registered dataset name (set by `data=NAME`)"})
    path: str | None = field(default=None, metadata={"help": "folder of the dataset's files"})
    seed: int = field(default=0, metadata={"help": "seed of every split and sample"})
    split_ratios: list[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        metadata={"help": "D'train / D_val / D_edit fractions of the training records"},
    )
    num_folds: int | None = field(default=None, metadata={
        "help": "number of D_edit folds (independent streams); default 20 as in the paper, or one per D_edit example "
                "where there are fewer (said in the notices); more folds than D_edit examples is an error"})
    train_subsample: int = field(default=10_000, metadata={"help": "size of D_tr, sampled from D'train"})
    pool_size: int = field(default=40_000, metadata={
        "help": "the memory pool: examples an editor may replay (T-Patcher's memory, KL samples, FTA's "
                "unmodified facts), from D'train minus D_tr"})
    max_records: int | None = field(default=None, metadata={"help": "read at most this many records of each file"})
    test_fraction: float = field(default=0.1, metadata={"help": "D_test's share where no test file exists"})
    background_fraction: float = field(default=0.5, metadata={
        "help": "edit-only files (CounterFact, a zsRE eval file alone): share of the records never edited, whose "
                "locality prompts (true facts) make D'train (D_tr, memory) and D_test"})
    background: str = field(default="locality", metadata={
        "help": "edit-only files: where the facts to keep (D'train: D_tr, memory; D_test) come from: locality (the "
                "unedited records' locality prompts) | facts (the embedded facts set, QA form) | a JSON/JSONL "
                "file of {prompt, target} records (every record is then an edit)"})

    def __post_init__(self) -> None:
        if len(self.split_ratios) != 3 or any(r < 0 for r in self.split_ratios):
            raise ValueError("data.split_ratios must be three non-negative fractions")
        if abs(sum(self.split_ratios) - 1.0) > 1e-6:
            raise ValueError(f"data.split_ratios must sum to 1, got {sum(self.split_ratios):.6g}")
        if not 0 < self.background_fraction < 1:
            raise ValueError(f"data.background_fraction must be in (0, 1), got {self.background_fraction}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.num_folds is not None and self.num_folds < 1:
            raise ValueError("data.num_folds must be at least 1")
        if self.train_subsample < 0 or self.pool_size < 0:
            raise ValueError("data.train_subsample and data.pool_size must be >= 0")


def check_source(url: str, sha256: str | None) -> None:
    """A published file's address (http or https only) and its optional SHA-256 (64 hex digits)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"data.url must be an http(s) address, got {url!r}")
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise ValueError(f"data.sha256 must be 64 hex digits, got {sha256!r}")


@dataclass
class BackTranslationConfig:
    forward: str | None = field(default=None, metadata={"help": "source->pivot model, e.g. Helsinki-NLP/opus-mt-en-de"})
    backward: str | None = field(default=None, metadata={"help": "pivot->source, e.g. Helsinki-NLP/opus-mt-de-en"})
    batch_size: int = field(default=32, metadata={"help": "texts per translation batch"})
    num_beams: int = field(default=4, metadata={"help": "beam size of both translations"})
    max_new_tokens: int = field(default=64, metadata={"help": "length limit of a translation"})

    @property
    def enabled(self) -> bool:
        return bool(self.forward and self.backward)
