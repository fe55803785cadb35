"""The shared vocabulary of every floor: an edit `Example`, the splits (`EditSplits`) and the part an
editor is handed (`EditorData`), the task kinds and the data error. Torch-free and importing
nothing of the project, so models, data, editors and the harness all build on it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

CLASSIFICATION = "classification"
GENERATION = "generation"
# the model families an adapter serves and an editor declares it edits (`Traits.families`)
MODEL_FAMILIES = ("classifier", "seq2seq", "decoder", "masked")


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


@dataclass
class Example:
    """One edit example. `target` is a label (int) for classification, answer text otherwise."""

    uid: str
    prompt: str
    target: Any
    equivalents: list[str] = field(default_factory=list)
    relation: str | None = None
    original_target: Any = None  # the true object when `target` is a modified one (Zhu et al.)
    alternative: Any = None  # a new object the file proposes (zsRE `alt`), for target=modified
    subject: str | None = None  # the fact's subject as written in the prompt (locate-then-edit keys)
    locality: list[tuple[str, Any]] = field(default_factory=list)  # (prompt, answer) to keep
    # Zhu et al.'s protocol: more training forms of the same fact (its supporting evidence), which
    # the initial fit and an editor may train on, and held-out probes, which only the loop reads
    # (A_M, A_F\S). The loop hands an editor the example without probes, equivalents and locality.
    forms: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)

    def training_prompts(self) -> list[str]:
        """The edit prompt and every other training form of the fact."""
        return [self.prompt, *self.forms]


def hold_out_probes(example: Example, rng: random.Random) -> Example:
    """Zhu et al., App. A (zsRE): of a fact's questions, two go to the held-out probes if it has
    more than three, none if it has one, one otherwise; the rest are training forms. The edit
    prompt (the first question) always stays a training form, so the probes are drawn from the
    others. Under this protocol the probes are also the equivalents (GR right after an edit)."""
    questions = [example.prompt, *example.equivalents]
    held = 2 if len(questions) > 3 else 0 if len(questions) == 1 else 1
    rest = questions[1:]
    probes = rng.sample(rest, held)
    forms = [q for q in rest if q not in probes]
    return replace(example, forms=forms, probes=probes, equivalents=list(probes))


def with_training_forms(examples: list[Example]) -> list[Example]:
    """One example per training form (the initial fit learns a fact from all its evidence)."""
    return [replace(e, prompt=p, forms=[]) for e in examples for p in e.training_prompts()]


@dataclass(frozen=True)
class EditorData:
    """All an editor is ever handed besides the stream example it edits: D'train without D_tr,
    D_val and the memory pool. D_tr, D_test and the A_F\\S facts stay with the loop, which
    measures TrainR, TestR and A_F\\S on them; an editor cannot train on what it is scored on
    because it never holds it."""

    task: str
    train: list[Example]
    val: list[Example]
    pool: list[Example]


@dataclass
class EditSplits:
    task: str
    train: list[Example]
    val: list[Example]
    folds: list[list[Example]]
    train_subsample: list[Example]
    test: list[Example]
    pool: list[Example]
    # A_F\S's facts (Zhu et al.), scored on their held-out probes; empty unless modified facts
    unmodified: list[Example] = field(default_factory=list)

    def for_editor(self) -> EditorData:
        """What an editor may learn from (see `EditorData`)."""
        held_out = {id(e) for e in (*self.train_subsample, *self.test, *self.unmodified)}

        def shown(examples: list[Example]) -> list[Example]:  # probes are evaluation data, whoever's
            return [replace(e, probes=[]) if e.probes else e for e in examples if id(e) not in held_out]

        return EditorData(task=self.task, train=shown(self.train), val=shown(self.val), pool=shown(self.pool))

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "val": len(self.val),
            "edit": sum(len(f) for f in self.folds),
            "folds": len(self.folds),
            "train_subsample": len(self.train_subsample),
            "test": len(self.test),
            "pool": len(self.pool),
            "unmodified": len(self.unmodified),
        }
