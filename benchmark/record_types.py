"""The lines of a run's `edits.jsonl`, typed: what the loop writes and what metrics, resume, the
distributed gather, the leaderboard and the timing report read, spelled once.

A line is a JSON object whose `type` names its kind: `edit` (one stream example, edited or not),
`eval` (ER, TrainR, TestR every `loop.eval_every` edits), `fold_end` (the final model's accuracies
and the fold's metrics) and `run_end` (the results, so a deleted results.json can be rebuilt).
`parse` reads a line into its class, filling what an older run did not write with the default;
`line` writes one back. The file stays the source of truth (its hash chain covers the JSON as
written), so readers parse what they need and never mutate a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class _Line:
    kind: ClassVar[str] = ""
    omit_when_none: ClassVar[tuple[str, ...]] = ()  # optional fields an older reader never saw as null

    def line(self) -> dict[str, Any]:
        out = {"type": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.omit_when_none:
                continue
            out[f.name] = value
        return out


@dataclass
class EditRecord(_Line):
    """One stream example: asked, and edited where it was a mistake (`edited`; in batch mode every
    fact of the fold is edited). `success` (SR), `gr` (the equivalents' scores) and the locality
    pairs kept (`loc_tokens`: EasyEdit's Loc; `loc`: right/wrong as f0 was) are measured right
    after the edit; `steps` counts the editor's optimizer steps for it."""
    kind: ClassVar[str] = "edit"
    omit_when_none: ClassVar[tuple[str, ...]] = ("info", "params_added", "loc_tokens", "loc")
    fold: int = 0
    index: int = 0
    uid: str = ""
    mistake: bool = False
    edited: bool = False
    success: bool | None = None
    gr: list[float] = field(default_factory=list)
    seconds: float | None = None
    steps: int = 0
    params_added: int | None = None
    info: dict[str, Any] | None = None
    loc_tokens: list[float] | None = None
    loc: list[float] | None = None


@dataclass
class EvalRecord(_Line):
    """The model after `edits` edits of a fold: ER over them, TrainR and TestR (null where a split
    is not read, as D_test while tuning on D_val)."""
    kind: ClassVar[str] = "eval"
    fold: int = 0
    edits: int = 0
    ER: float | None = None
    TrainR: float | None = None
    TestR: float | None = None
    seconds: float | None = None


@dataclass
class FoldEndRecord(_Line):
    """The end of a fold: the final model's accuracies (`final`, with the per-example `items` the
    intervals resample), the fold's metrics, and the editor's own report."""
    kind: ClassVar[str] = "fold_end"
    fold: int = 0
    final: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    editor: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None


@dataclass
class RunEndRecord(_Line):
    kind: ClassVar[str] = "run_end"
    results: dict[str, Any] = field(default_factory=dict)


Record = EditRecord | EvalRecord | FoldEndRecord | RunEndRecord
KINDS: dict[str, type] = {c.kind: c for c in (EditRecord, EvalRecord, FoldEndRecord, RunEndRecord)}


def parse(line: dict[str, Any]) -> Record:
    """A record line as its class; keys the class does not know (the hash chain's link) are left out."""
    kind = KINDS.get(line.get("type"))
    if kind is None:
        raise ValueError(f"record line of unknown type {line.get('type')!r}")
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in line.items() if k in names})


def parse_all(lines: list[dict[str, Any]]) -> list[Record]:
    return [parse(x) for x in lines]


def edits_in(records: list[Record], fold: int | None = None, edited_only: bool = True) -> list[EditRecord]:
    """The edit records (of `fold`, where given), by default only those of examples that were edited."""
    return [r for r in records if isinstance(r, EditRecord) and (fold is None or r.fold == fold)
            and (r.edited or not edited_only)]


def fold_ends(records: list[Record]) -> dict[int, FoldEndRecord]:
    return {r.fold: r for r in records if isinstance(r, FoldEndRecord)}
