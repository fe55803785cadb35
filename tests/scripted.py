"""A hand-made dataset and a scripted editor whose every metric can be worked out by hand."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from benchmark.registry import DATASETS, EDITORS
from benchmark.types import EditSplits, Example
from data.base import DataConfig, EditDataModule
from editors.base import Editor, EditorConfig, EditResult


def ex(uid: str, target: str = " yes", equivalents: int = 2) -> Example:
    """An example whose equivalents are uid~0, uid~1, ... and whose held-out probe is uid?."""
    return Example(uid=uid, prompt=uid, target=target, equivalents=[f"{uid}~{i}" for i in range(equivalents)],
                   probes=[f"{uid}?"])


# What the initial model knows: prompt -> answer (a fact it knows, it knows under its probe too).
KNOWN = {p: " yes" for uid in ("a", "t1", "t2", "x1") for p in (uid, f"{uid}?")} | {"d": " no"}
# c's locality pairs: t1, which f0 gets right, and x2, which it gets wrong
FOLDS = [[ex("a"), ex("b"), replace(ex("c"), locality=[("t1", " yes"), ("x2", " yes")]), ex("d")],
         [ex("e"), ex("f", equivalents=0)]]
TRAIN_SUBSAMPLE = [ex("t1"), ex("t2"), ex("t3")]  # initial accuracy 2/3
TEST = [ex("x1"), ex("x2")]  # initial accuracy 1/2


@dataclass
class HandmadeConfig(DataConfig):
    num_folds: int = 2
    modified: bool = False  # serve the streams as modified facts, with D_tr as A_F\S's facts


class HandmadeData(EditDataModule):
    config_class = HandmadeConfig

    def setup(self, stage=None):
        folds = [list(f) for f in FOLDS]
        if self.config.modified:  # the old (true) object of every streamed fact is " no"
            folds = [[replace(e, original_target=" no") for e in f] for f in folds]
        self.splits = EditSplits(task="generation", train=[], val=[], folds=folds,
                                 train_subsample=list(TRAIN_SUBSAMPLE), test=list(TEST), pool=[],
                                 unmodified=list(TRAIN_SUBSAMPLE) if self.config.modified else [])


@dataclass
class ScriptedConfig(EditorConfig):
    forget: bool = False  # each edit erases the previous edit and t1
    crash_at: int = -1  # raise on this edit call (simulated crash), counting from 0
    equivalents_learned: int = 1  # of each edit's equivalents, how many the edit also fixes
    sleep: float = 0.0  # seconds each edit takes (signal tests)
    generalises: bool = True  # an edit also fixes the fact's held-out probe
    fail: list[str] = field(default_factory=list)  # prompts whose edit changes nothing
    side_effect: str = ""  # a prompt each edit also makes the model answer " maybe"


class Crash(RuntimeError):
    pass


class ScriptedEditor(Editor):
    traits = Editor.traits.but(batches=True)
    config_class = ScriptedConfig
    calls = 0

    def prepare(self, splits):
        self.knowledge = dict(KNOWN)
        self.last = None

    def reset(self):
        self.knowledge, self.last = dict(KNOWN), None

    def scores(self, prompts, targets):
        return [float(self.knowledge.get(p) == t) for p, t in zip(prompts, targets)]

    def predictions(self, prompts, targets):  # one "token" per answer: its checksum (None: no answer)
        return [[zlib.crc32(str(self.knowledge.get(p)).encode())] for p in prompts]

    def edit(self, example):
        if ScriptedEditor.calls == self.config.crash_at:
            ScriptedEditor.calls += 1
            raise Crash("simulated crash")
        ScriptedEditor.calls += 1
        if example.prompt in self.config.fail:
            return EditResult(steps=1)
        if self.config.sleep:
            import time

            time.sleep(self.config.sleep)
        if self.config.forget:
            for prompt in (self.last, "t1"):
                for known in [prompt, f"{prompt}?", *(f"{prompt}~{i}" for i in range(2))]:  # with its equivalents
                    self.knowledge.pop(known, None)
        self.knowledge[example.prompt] = example.target
        if self.config.side_effect:
            self.knowledge[self.config.side_effect] = " maybe"
        assert not example.equivalents, "the loop hands an editor no equivalents (GR is measured on them)"
        assert not example.probes, "the loop hands an editor no held-out probes (A_M is measured on them)"
        if self.config.generalises:
            self.knowledge[f"{example.prompt}?"] = example.target
        for i in range(self.config.equivalents_learned):  # ex() names an example's equivalents uid~i
            self.knowledge[f"{example.prompt}~{i}"] = example.target
        self.last = example.prompt
        return EditResult(steps=1)

    def edit_batch(self, examples):
        for example in examples:
            self.edit(example)
        return EditResult(steps=len(examples), info={"facts": len(examples)})

    def edit_state(self):
        return {"knowledge": dict(self.knowledge), "last": self.last}

    def load_edit_state(self, state):
        self.knowledge, self.last = dict(state["knowledge"]), state["last"]

    def params_added(self):
        return 7 * len(self.knowledge)


class StaticData(EditDataModule):
    """Serves whatever splits a test put in `StaticData.splits_to_serve`."""

    config_class = HandmadeConfig
    splits_to_serve: EditSplits | None = None

    def setup(self, stage=None):
        self.splits = StaticData.splits_to_serve


@contextmanager
def registered() -> Iterator[None]:
    """The test pieces, registered for the with-block only (the `scripted` fixture; a test's
    subprocess enters it around `main`): `seqedit list`, the demo and the matrices never see them."""
    with (DATASETS.added("static", StaticData, HandmadeConfig, "test splits set by the test itself"),
          EDITORS.added("scripted", ScriptedEditor, ScriptedConfig, "test editor with scripted knowledge"),
          DATASETS.added("handmade", HandmadeData, HandmadeConfig, "test stream of hand-made examples")):
        yield
