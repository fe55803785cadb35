"""Editors that keep the model and answer from a memory of edits (kNN-LM, SERA).

An edit stores (key of the prompt, wanted answer). At prediction, an input whose key is close
enough to a stored one (`in_scope`) gets that edit's answer; any other input gets the model's.
Subclasses say how a prompt becomes a key and what "close enough" is.

The model and the key encoder never change while editing, so a prompt's key and the model's score
of (prompt, target) are computed once (`FrozenOutputs`) and reused at every later evaluation of
D_tr and D_test: the loop's evaluations then cost a search of the store, not forwards. Exact by
construction: the values are dropped whenever anything they rest on changes (`modules_state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from benchmark.models.prefix_cache import modules_state
from benchmark.types import Example
from editors.base import Editor, EditResult
from editors.datastore import Datastore


class FrozenOutputs:
    """Values computed from an input by modules that are not trained (a prompt's key, the base
    model's score of a prompt and target), each computed once and kept while `modules_state` of
    those modules is the one they were computed under; any change to a weight, buffer, mode or hook
    drops them all. At most `max_items` are kept (then they are dropped and counting restarts)."""

    def __init__(self, modules: Callable[[], list[torch.nn.Module]], max_items: int = 100_000):
        self.modules, self.max_items = modules, max_items  # asked at every use: a module may be replaced
        self.values: dict[Hashable, Any] = {}
        self.state: tuple | None = None

    def __call__(self, inputs: list[Hashable], compute: Callable[[list], list]) -> list:
        """The value of every input, computing (in one call, once each) those not held."""
        now = modules_state([m for module in self.modules() for m in module.modules()])
        if now != self.state or len(self.values) + len(inputs) > self.max_items:
            self.values, self.state = {}, now
        missing = list(dict.fromkeys(i for i in inputs if i not in self.values))
        if missing:
            self.values.update(zip(missing, compute(missing)))
        return [self.values[i] for i in inputs]


class RetrievalEditor(Editor):
    traits = Editor.traits.but(answers_from_memory=True, batches=True)
    reuse_outputs = True  # keep keys and base scores (`FrozenOutputs`); False computes them every time

    def __init__(self, config, adapter, width: int):
        super().__init__(config, adapter)
        self.store = Datastore(width, getattr(config, "backend", "auto"))
        self._keys = FrozenOutputs(self.key_modules)
        self._base = FrozenOutputs(lambda: [self.adapter.model])
        self.preloaded = 0  # entries that belong to the initial model (kNN-LM over training data)
        self._off = False
        self._edit_distances: list[float] = []

    # -- what subclasses define ----------------------------------------------------------------
    def keys(self, prompts: list[str]) -> Tensor:
        raise NotImplementedError

    def in_scope(self, distance: Tensor) -> Tensor:
        raise NotImplementedError

    def key_modules(self) -> list[torch.nn.Module]:
        """The modules `keys` runs (the model, by default)."""
        return [self.adapter.model]

    # -- the frozen model's outputs, computed once each ----------------------------------------
    def prompt_keys(self, prompts: list[str]) -> Tensor:
        if not self.reuse_outputs:
            return self.keys(prompts)
        rows = self._keys(prompts, lambda todo: list(self.keys(todo)))
        return torch.stack(rows) if rows else self.keys(prompts)

    def base_scores(self, prompts: list[str], targets: list[Any]) -> list[float]:
        if not self.reuse_outputs:
            return self.adapter.scores(prompts, targets)
        pairs = [(p, repr(t)) for p, t in zip(prompts, targets)]
        wanted = dict(zip(pairs, targets))
        return self._base(pairs, lambda todo: self.adapter.scores([p for p, _ in todo], [wanted[k] for k in todo]))

    # -- editing -------------------------------------------------------------------------------
    def preload(self, examples: list[Example]) -> None:
        """Entries present from the start of every fold (not edits)."""
        self.store.add(self.prompt_keys([e.prompt for e in examples]), [e.target for e in examples])
        self.preloaded = len(self.store)

    def edit(self, example: Example) -> EditResult:
        """One entry per training form of the fact (Zhu et al.'s datastore holds the supporting
        evidence of the modified facts; a plain example has one form, its prompt)."""
        prompts = example.training_prompts()
        keys = self.prompt_keys(prompts)
        distance = float(self.store.search(keys[:1])[0][0])  # inf while the store is empty
        self.store.add(keys, [example.target] * len(prompts))
        if not math.isfinite(distance):
            return EditResult(steps=0, info={"nearest_distance": None})
        self._edit_distances.append(distance)
        return EditResult(steps=0, info={"nearest_distance": distance})

    def edit_batch(self, examples: list[Example]) -> EditResult:
        """Every form of every fact into the datastore at once (loop.mode=batch)."""
        prompts = [p for e in examples for p in e.training_prompts()]
        self.store.add(self.prompt_keys(prompts), [e.target for e in examples for _ in e.training_prompts()])
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
            return self.base_scores(prompts, targets)
        distance, index = self.store.search(self.prompt_keys(prompts))
        hit = self.in_scope(distance).tolist()
        rest = [i for i, h in enumerate(hit) if not h]
        base = self.base_scores([prompts[i] for i in rest], [targets[i] for i in rest]) if rest else []
        out = [0.0] * len(prompts)
        for i, score in zip(rest, base):
            out[i] = score
        for i, h in enumerate(hit):
            if h:
                out[i] = float(self._same(self.store.values[int(index[i])], targets[i]))
        return out

    @torch.no_grad()
    def predictions(self, prompts: list[str], targets: list[Any]) -> list[list[int]]:
        """The model's teacher-forced answers, and a stored answer's own tokens where the memory
        answers (an in-scope prompt gets that answer whole, whatever the target)."""
        out = self.adapter.predictions(prompts, targets)
        if self._off or len(self.store) == 0 or not prompts:
            return out
        distance, index = self.store.search(self.prompt_keys(prompts))
        for i, hit in enumerate(self.in_scope(distance).tolist()):
            if hit:
                out[i] = self.adapter.target_ids(prompts[i], self.store.values[int(index[i])])
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
