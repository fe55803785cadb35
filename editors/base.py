"""The editor interface. The loop (benchmark.loop) never asks which editor it runs: an editor
edits one example and answers for the current model; what it needs is declared, not branched on.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor

from benchmark.models.base import FFNSite, ModelAdapter, installed
from benchmark.models.kept_positions import last_block_from_scored
from benchmark.types import GENERATION, MODEL_FAMILIES, EditorData, Example
from editors.configs.base import EditorConfig, TrainedEditorConfig  # noqa: F401  (its config, torch-free)


def answer_pool(examples: list[Example]) -> dict[str | None, list[Any]]:
    """The answers of `examples` by relation: where a training edit's new answer is drawn from
    (`Task.new_answer`), as KE's, MEND's and RLEdit's training phases teach."""
    pool: dict[str | None, list[Any]] = {}
    for e in examples:
        pool.setdefault(e.relation, []).append(e.target)
    return pool


def scored_forward(adapter, batch, params: list[Tensor], mode: str,
                   reference: bool = False) -> tuple[Tensor | None, Callable[[], Tensor]]:
    """A function giving the scored logits of `batch` with gradient each step, and (fast mode, or
    with `reference`) the current ones without gradient. Fast mode, where only a run of last blocks
    trains: their input is recorded now, in a forward that also gives the current logits, and a
    step runs only them and the head (exact; `ModelAdapter.suffix`), and where that run is the last
    block alone, only its positions from each row's first scored one on (`last_block_from_scored`,
    a causal decoder's LLaMA-layout blocks); otherwise the full forward."""
    first = adapter.trained_suffix(params) if mode == "fast" else None
    if first is not None and first == len(adapter.layer_modules()) - 1:  # the last block alone
        served = last_block_from_scored(adapter, batch)  # from the scored positions on (exact)
        if served is not None:
            return served
    if first is not None:
        return adapter.suffix(batch, first)
    current = None
    if reference:
        with torch.no_grad():
            current = adapter.scored_logits(batch)
    return current, lambda: adapter.scored_logits(batch)


@dataclass
class EditResult:
    steps: int
    info: dict[str, Any] = field(default_factory=dict)  # editor-specific, JSON-serialisable


@dataclass(frozen=True)
class Check:
    """The loop's check of a stream example before any edit: its score, and whatever the editor
    computed on the way and wants back in `after_example` (T-Patcher: the example's FFN queries),
    handed over by the loop instead of kept behind its back."""

    score: float
    carry: Any = None


@dataclass(frozen=True)
class Traits:
    """What an editor needs from a run and what it serves, declared once per class (`Editor.traits`)
    and read by the harness, which never asks which editor it runs. `pool` and `val` may depend on
    the editor's settings: a function of its config instead of a bool."""

    families: tuple[str, ...] = MODEL_FAMILIES  # the model families it edits; a run refuses the others
    pool: bool | Callable[[Any], bool] = False  # reads the memory pool (a run with none is refused)
    val: bool | Callable[[Any], bool] = False  # reads D_val while editing (T-Patcher's published stop rule)
    training: bool = False  # a training phase runs before editing (cached; `Editor.training_version`)
    batches: bool = False  # implements `edit_batch` (loop.mode=batch, Zhu et al.)
    one_shot: bool = False  # one predicted update per edit (KE, MEND, UltraEdit), not optimised until right
    adds_parameters: bool = False  # grows the model instead of changing its weights
    answers_from_memory: bool = False  # edits live beside the model, which never changes

    def reads_pool(self, config: EditorConfig) -> bool:
        return self.pool(config) if callable(self.pool) else self.pool

    def reads_val(self, config: EditorConfig) -> bool:
        return self.val(config) if callable(self.val) else self.val

    def but(self, **changes) -> Traits:
        """These traits with some changed: a subclass declares only what differs from its base."""
        return replace(self, **changes)


class Editor(L.LightningModule):
    """Base class. Subclasses implement `edit` and, if they change more than `trainable_parameters`
    or add modules, `edit_state` / `load_edit_state` / `reset`; they declare in `traits` what they
    need and serve."""

    config_class: ClassVar[type] = EditorConfig
    traits: ClassVar[Traits] = Traits()
    training_version: ClassVar[int] = 1  # part of the trained state's cache key: bump when training changes

    def __init__(self, config: EditorConfig, adapter: ModelAdapter):
        super().__init__()
        if adapter.family not in self.traits.families:
            raise ValueError(f"editor={config.name} edits {' or '.join(self.traits.families)} models; "
                             f"{adapter.config.name} is a {adapter.family} model")
        self.config = config
        self.adapter = adapter
        self.model = adapter.model  # registered as a submodule so Lightning moves it with us
        self._initial: dict[str, Tensor] = {}

    # -- what an editor may touch, and the initial model of every fold ------------------------
    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameters this editor changes; they are saved and restored between folds."""
        return {}

    def prepare(self, data: EditorData) -> None:
        """Once per run, before the first fold: freeze what the editor does not own (no wasted
        gradients), snapshot the initial weights, read the memory."""
        trainable = set(map(id, self.trainable_parameters().values()))
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        self._initial = {n: p.detach().clone() for n, p in self.trainable_parameters().items()}

    def edited_from(self) -> int | None:
        """The first transformer block an edit can change (its weights or hooks there); None where
        an edit can change what comes before the blocks (embeddings, a head tied to them).
        The loop's evaluations then rerun only the blocks from there on (`PrefixCache`, which checks
        at every use that nothing before them changed, and otherwise runs the full forward)."""
        return self.adapter.trained_suffix(self.trainable_parameters().values())

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the initial model f0 (the start of every fold)."""
        params = self.trainable_parameters()
        for name, value in self._initial.items():
            params[name].copy_(value)

    def edit(self, example: Example) -> EditResult:
        raise NotImplementedError

    def edit_batch(self, examples: list[Example]) -> EditResult:
        """Edit every example at once, from all their training forms (editors with `traits.batches`)."""
        raise NotImplementedError(f"{type(self).__name__} edits one example at a time")

    def check(self, example: Example) -> Check:
        """The loop's mistake check of a stream example (score 1: right)."""
        return Check(self.scores([example.prompt], [example.target])[0])

    def after_example(self, example: Example, check: Check) -> None:
        """Called after every stream example, edited or not, with the loop's check of it before
        any edit (T-Patcher grows its memory here)."""

    def scores(self, prompts: list[str], targets: list[Any]) -> list[float]:
        """Correctness of the current (edited) model; editors that answer differently override."""
        return self.adapter.scores(prompts, targets)

    def predictions(self, prompts: list[str], targets: list[Any]) -> list[list[int]]:
        """The current model's answer at each scored position under teacher forcing on the target
        (`ModelAdapter.predictions`); editors that answer differently override, with `scores`."""
        return self.adapter.predictions(prompts, targets)

    def answer_nll(self, prompts: list[str], targets: list[Any]) -> list[float] | None:
        """Each answer's mean negative log-probability per token on the current model (ROME's
        CounterFact scores); None where the editor answers from a memory and has no such number."""
        if self.traits.answers_from_memory or self.adapter.task != GENERATION:
            return None
        return self.adapter.answer_nll(prompts, targets)

    def params_added(self) -> int:
        return 0

    @contextmanager
    def disabled(self):
        """The base model exactly, for editors that add parameters or answer from a memory."""
        raise NotImplementedError(f"{type(self).__name__} adds no parameters to disable")
        yield

    def fold_report(self) -> dict[str, Any]:
        """Editor-specific results of a finished fold, stored with its record (JSON-serialisable)."""
        return {}

    # -- training phase (traits.training) ------------------------------------------------------
    def training_module(self, data: EditorData) -> L.LightningModule:
        """A LightningModule with its own data loaders whose fit trains what the editor learns;
        it logs `monitor` (higher is better) on D_val."""
        raise NotImplementedError(f"{type(self).__name__} has no training phase")

    def trained_state(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} has no training phase")

    def load_trained(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no training phase")

    # -- resume ---------------------------------------------------------------------------------
    def edit_state(self) -> dict[str, Any]:
        """Everything the edits so far have changed, to continue a fold after a crash: the trainable
        tensors that differ from the fold's initial model (`reset` restores the others)."""
        return {n: p.detach().clone() for n, p in self.trainable_parameters().items()
                if not torch.equal(p, self._initial[n])}

    @torch.no_grad()
    def load_edit_state(self, state: dict[str, Any]) -> None:
        params = self.trainable_parameters()
        for name, value in state.items():
            params[name].copy_(value)

    # -- Lightning -------------------------------------------------------------------------------
    def test_step(self, batch, batch_idx):  # the stream is driven by SequentialEditingCallback
        return None

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class ReferenceOutputs:
    """The original model's scored logits on examples, each computed once per run: where a KL's
    reference is the original model (the fold's initial model is the run's, f0), its outputs on a
    memory example never change, so only examples not seen before are run (under `original`, a
    context that gives the original model: hooks removed, tuned tensors swapped back). A
    vocabulary-sized row per target token adds up (SmolLM2: 0.2 MB a row), so the cache stops
    growing at `max_bytes`; examples beyond it are run each time they are asked for."""

    def __init__(self, adapter: ModelAdapter, max_bytes: int = 2**30):
        self.adapter, self.max_bytes, self.bytes = adapter, max_bytes, 0
        self.rows: dict[tuple[str, str], Tensor] = {}

    @torch.no_grad()
    def __call__(self, examples: list[Example], original) -> Tensor:
        keys = [(e.prompt, str(e.target)) for e in examples]
        missing = {k: e.target for k, e in zip(keys, examples) if k not in self.rows}
        todo, step, found = list(missing), self.adapter.config.eval_batch_size, {}
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            batch = self.adapter.encode([prompt for prompt, _ in chunk], [missing[k] for k in chunk])
            with original():
                logits = self.adapter.scored_logits(batch)
            counts = torch.bincount(batch.owner, minlength=batch.size).tolist()
            found.update(zip(chunk, logits.split(counts)))
        for key, rows in found.items():
            size = rows.numel() * rows.element_size()
            if self.bytes + size <= self.max_bytes:
                self.rows[key], self.bytes = rows, self.bytes + size
        return torch.cat([self.rows[k] if k in self.rows else found[k] for k in keys])


def read_position_block(adapter: ModelAdapter, name: str, layer: int | None, default: Callable[[int], int]) -> int:
    """The block of an editor whose hooks act at the read position of the adapter's teacher-forced
    forwards (GRACE's codebook, DEFER's adaptor): `layer`, else `default(blocks)`; refused where the
    model is scored by generation, whose forwards pass no read position."""
    if adapter.scores_by_generation:
        raise ValueError(f"editor={name} acts at the read position of a teacher-forced forward; this model is "
                         "scored by generation: use model.metric=token_accuracy")
    return default(len(adapter.layer_modules())) if layer is None else layer


def capture_at_read(adapter: ModelAdapter, site: FFNSite, batch, layer: int) -> tuple[Any, Tensor, int]:
    """One example's forward captured at block `layer` (`ModelAdapter.capture`, with whatever hooks
    are installed), the FFN's inner activation at its read position (GRACE's key, DEFER's query),
    and the row of the FFN output that position is: the scored rows alone at the last block (the
    read position is the first of them), every position before it."""
    seen: dict[str, Tensor] = {}

    def keep_inner(_m, args):
        seen.setdefault("inner", args[0])

    with installed([site.out_proj.register_forward_pre_hook(keep_inner)]):
        cache = adapter.capture(batch, layer)
    at = int(adapter.read_positions(batch)[0])
    return cache, seen["inner"][0, at].detach().float(), 0 if site.is_last else at


def optimise(adapter: ModelAdapter, batch, forward: Callable[[], Tensor], optimizer, max_steps: int,
             stop_when_correct: bool, extra_loss: Callable[[], Tensor] | None = None, scheduler=None) -> int:
    """`max_steps` optimiser steps of the task loss on `forward()`'s logits (plus `extra_loss()`),
    stopped before a step once the edit holds where `stop_when_correct`; returns the steps taken.
    The fixed-step loop of the editors that train a few tensors on each edit (LoRA, MELO)."""
    steps = 0
    with torch.enable_grad():
        for steps in range(max_steps + 1):
            logits = forward()
            holds = stop_when_correct and bool(adapter.token_correct(batch, logits).all())
            if holds or steps == max_steps:
                break
            loss = adapter.loss(batch, logits)
            if extra_loss is not None:
                loss = loss + extra_loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    return steps


class HookedEditor(Editor):
    """An editor whose edits live in forward hooks it installs on the model (T-Patcher's patches,
    GRACE's codebook); `disabled` removes them, which gives the base model exactly."""

    traits = Traits(adds_parameters=True)
    site: FFNSite  # the FFN whose output the hooks change

    def edited_from(self) -> int | None:
        return self.site.layer_index

    def _install(self) -> list:
        """Install the hooks; returns their handles."""
        raise NotImplementedError

    def _enable(self) -> None:
        self._handles = self._install()

    @contextmanager
    def disabled(self):
        for h in self._handles:
            h.remove()
        try:
            yield
        finally:
            self._enable()
