"""Editors that keep the model and answer from a memory of edits (kNN-LM, SERA).

An edit stores (key of the prompt, wanted answer). At prediction, an input whose key is close
enough to a stored one (`in_scope`) gets that edit's answer; any other input gets the model's.
Subclasses say how a prompt becomes a key and what "close enough" is.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from benchmark.types import Example
from editors.base import Editor, EditResult
from editors.datastore import Datastore


class RetrievalEditor(Editor):
    answers_from_memory = True
    edits_batches = True

    def __init__(self, config, adapter, width: int):
        super().__init__(config, adapter)
        self.store = Datastore(width, getattr(config, "backend", "auto"))
        self.preloaded = 0  # entries that belong to the initial model (kNN-LM over training data)
        self._off = False
        self._edit_distances: list[float] = []

    # -- what subclasses define ----------------------------------------------------------------
    def keys(self, prompts: list[str]) -> Tensor:
        raise NotImplementedError

    def in_scope(self, distance: Tensor) -> Tensor:
        raise NotImplementedError

    # -- editing -------------------------------------------------------------------------------
    def preload(self, examples: list[Example]) -> None:
        """Entries present from the start of every fold (not edits)."""
        self.store.add(self.keys([e.prompt for e in examples]), [e.target for e in examples])
        self.preloaded = len(self.store)

    def edit(self, example: Example) -> EditResult:
        """One entry per training form of the fact (Zhu et al.'s datastore holds the supporting
        evidence of the modified facts; a plain example has one form, its prompt)."""
        prompts = example.training_prompts()
        keys = self.keys(prompts)
        distance = float(self.store.search(keys[:1])[0][0])  # inf while the store is empty
        self.store.add(keys, [example.target] * len(prompts))
        if not math.isfinite(distance):
            return EditResult(steps=0, info={"nearest_distance": None})
        self._edit_distances.append(distance)
        return EditResult(steps=0, info={"nearest_distance": distance})

    def edit_batch(self, examples: list[Example]) -> EditResult:
        """Every form of every fact into the datastore at once (loop.mode=batch)."""
        prompts = [p for e in examples for p in e.training_prompts()]
        self.store.add(self.keys(prompts), [e.target for e in examples for _ in e.training_prompts()])
        return EditResult(steps=0, info={"entries_added": len(prompts)})

    def reset(self) -> None:
        self.store.truncate(self.preloaded)
        self._edit_distances = []

    def edited_from(self) -> int | None:
        # the model never changes: any block would do, and the last leaves the least to rerun
        return len(self.adapter.layer_modules()) - 1

    def _same(self, answer: Any, target: Any) -> bool:
        return self.adapter.task.same_answer(answer, target)

    @torch.no_grad()
    def scores(self, prompts: list[str], targets: list[Any]) -> list[float]:
        if self._off or len(self.store) == 0 or not prompts:
            return self.adapter.scores(prompts, targets)
        distance, index = self.store.search(self.keys(prompts))
        hit = self.in_scope(distance).tolist()
        rest = [i for i, h in enumerate(hit) if not h]
        base = self.adapter.scores([prompts[i] for i in rest], [targets[i] for i in rest]) if rest else []
        out = [0.0] * len(prompts)
        for i, score in zip(rest, base):
            out[i] = score
        for i, h in enumerate(hit):
            if h:
                out[i] = float(self._same(self.store.values[int(index[i])], targets[i]))
        return out

    @contextmanager
    def disabled(self):
        """The base model's answers: the memory is bypassed."""
        self._off = True
        try:
            yield
        finally:
            self._off = False

    def fold_report(self) -> dict[str, Any]:
        d = self._edit_distances
        return {"entries": len(self.store), "edits": len(self.store) - self.preloaded,
                "nearest_distance_at_edit": {"min": min(d), "mean": sum(d) / len(d), "max": max(d)} if d else None}

    # -- resume --------------------------------------------------------------------------------
    def edit_state(self) -> dict[str, Any]:
        return {**self.store.state(self.preloaded), "distances": list(self._edit_distances)}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        self.reset()
        self.store.add(state["keys"], state["values"])
        self._edit_distances = list(state["distances"])
