"""The settings every editor shares, and the search backends of the datastore editors. Torch-free:
`seqedit help`, `config` and `list` read every editor's config without importing an editor."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EditorConfig:
    name: str = field(default="", metadata={"help": "registered editor name (set by `editor=NAME`)"})

    def __post_init__(self) -> None:
        pass


@dataclass
class SteppedEditorConfig(EditorConfig):
    """An editor that trains what it edits with an optimizer: `max_steps` always counts optimizer steps
    of the edited parameters, and an edit's record says how many it took (`steps`)."""

    max_steps: int = field(default=100, metadata={"help": "optimizer steps allowed per edit"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_steps < 1:
            raise ValueError(f"editor.max_steps must be at least 1, got {self.max_steps}")


@dataclass
class TrainedEditorConfig(EditorConfig):
    """Shared fields of editors with a training phase; they all enter the cache key."""

    train_epochs: int = field(default=3, metadata={"help": "epochs of the training phase"})
    train_lr: float = field(default=1e-4, metadata={"help": "learning rate of the training phase"})
    train_batch_size: int = field(default=16, metadata={"help": "batch size of the training phase"})
    train_examples: int = field(default=10_000, metadata={"help": "D'train examples the training phase reads"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_epochs < 1 or self.train_lr <= 0 or self.train_batch_size < 1 or self.train_examples < 1:
            raise ValueError("editor.train_epochs, train_batch_size, train_examples >= 1 and train_lr > 0 are required")


BACKENDS = ("auto", "torch", "faiss")
