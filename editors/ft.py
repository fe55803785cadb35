"""Fine-tuning baselines (T-Patcher App. B): FT(all), FT(last), FT(all)+KL, FT(last)+KL.

Adam at lr 1e-5 on the edit example until the model gets it right, within `max_steps`. The KL
variants add KL(f_pre || f) on `kl_batch` examples sampled from the memory pool, f_pre being the
model before this edit; its outputs are computed once per edit, since they do not change. The
KL runs in chunks of `kl_chunk` examples, shortest first, each backwarded before the next is
made (the same gradient; less memory, and on a CPU less time), and an edit's first step leaves
it out: the model is still f_pre there, where the KL and its gradient are zero.

`recipe=official` follows the published code instead (ZeroYuHuang/Transformer-Patcher,
scripts/ft.py and src/utils.py at commit fec629a; the README's recipe table cites each line):
tuned weights exclude biases, norms, embeddings and heads (ft.py:114); every step runs in train
mode, dropout on (ft.py:184); the QA loss is label-smoothed NLL, eps 0.1, summed over tokens
(ft.py:198, seq2seq_modules.py:536); the KL reference is the fold's *original* model (ft.py:204),
on pool batches of 64 reshuffled every step (sme_dataset.py:146-149) as many as fit in 512 minus
the past edits, accumulated exactly as `get_kl_diver_loss` does (utils.py:202-228, its division
inside the loop included), plus up to 100 past edits divided by their count; at most
`max_steps` + 1 steps (2,000 by default, utils.py:33; ft.py:180 stops at `edit_step > max`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from benchmark.types import CLASSIFICATION, GENERATION, EditorData, Example
from editors.base import Editor, EditResult, ReferenceOutputs, scored_forward
from editors.configs.ft import (  # noqa: F401  (its config, torch-free)
    CPU_KL_CHUNK,
    OFFICIAL_KL_BATCH,
    OFFICIAL_PAST,
    OFFICIAL_STEPS,
    RECIPES,
    FTConfig,
    FTKLAllConfig,
    FTKLLastConfig,
    FTLastConfig,
)

# published code: parameters whose names contain these are never fine-tuned (scripts/ft.py:114)
OFFICIAL_FROZEN = ("bias", "norm", "embeddings", "classifier", "pooler", "shared", "embed", "positions")
# label smoothing of the edit loss: the QA models' loss smooths (utils.py:122-139), the BERT
# classifier's is plain BCE
OFFICIAL_SMOOTHING = {CLASSIFICATION: 0.0, GENERATION: 0.1}


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where torch has one for these tensors: on CPU it steps a 135M
    parameter model in a quarter of the default loop's time (0.29 s vs 1.13 s, SmolLM2)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def kl_batches_used(available: int, batch_size: int, total: int, past: int) -> int:
    """How many pool batches the published loop reads before it stops (utils.py:208-216)."""
    used, seen = 0, 0
    while used < available:
        used, seen = used + 1, seen + batch_size
        if seen + batch_size >= total - past:
            break
    return used


def published_kl(batch_kls, batch_size: int, total: int, past: int) -> Tensor | float:
    """The pool's KL as the published `get_kl_diver_loss` accumulates it (utils.py:208-217): each
    batch adds its mean KL times its size; the running sum is divided by the examples seen so far
    *inside* the loop, except after the last batch, which stops once the next would reach
    total - past. So the last batch weighs batch_size times its mean KL, the others far less."""
    kl, seen = 0.0, 0
    for batch_kl in batch_kls:
        kl = kl + batch_kl * batch_size
        seen += batch_size
        if seen + batch_size >= total - past:
            break
        kl = kl / seen
    return kl


def published_kl_weights(batches: int, batch_size: int, total: int, past: int) -> list[float]:
    """Each batch's weight in `published_kl`'s sum, from the same arithmetic run on the weights:
    sum(w * kl for w, kl in zip(weights, batch_kls)) is that sum, term by term."""
    weights, seen = [], 0
    for _ in range(batches):
        weights.append(float(batch_size))
        seen += batch_size
        if seen + batch_size >= total - past:
            break
        weights = [w / seen for w in weights]
    return weights


def fine_tune(optimizer: torch.optim.Optimizer, max_steps: int,
              look: Callable[[], tuple[bool, Callable[[], Tensor | Iterable[Tensor]]]],
              after_step: Callable[[], None] | None = None) -> int:
    """The fine-tuning loop of every FT editor (FT, FT+KL, constrained FT; plain FT is the
    constrained one with delta = infinity, so no projection): `look()` says whether the edit holds
    and gives the loss to descend; stop when it holds or at max_steps, else one step, then
    `after_step` (constrained FT's projection). Returns the steps taken."""
    steps = 0
    with torch.enable_grad():
        for steps in range(max_steps + 1):
            holds, loss = look()
            if holds or steps == max_steps:
                break
            descend(optimizer, loss(), after_step)
    return steps


def descend(optimizer: torch.optim.Optimizer, loss: Tensor | Iterable[Tensor],
            after_step: Callable[[], None] | None = None) -> None:
    """One step on `loss`: a tensor, or parts that sum to it, each made and backwarded in turn so
    that one part's graph is alive at a time (the KL term over hundreds of pool examples)."""
    optimizer.zero_grad(set_to_none=True)
    for part in [loss] if isinstance(loss, Tensor) else loss:
        part.backward()
    optimizer.step()
    if after_step is not None:
        after_step()


class FTEditor(Editor):
    config_class = FTConfig
    traits = Editor.traits.but(pool=lambda c: c.kl_weight > 0)  # only the KL variants read the pool

    def __init__(self, config: FTConfig, adapter):
        super().__init__(config, adapter)
        self.pool: list[Example] = []
        self.original: dict[str, Tensor] = {}  # official recipe: the fold's original weights
        self.past: list[Example] = []  # official recipe: this fold's edited examples
        self.references = ReferenceOutputs(adapter)  # official recipe: the original model's outputs

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        chosen = self.adapter.select_parameters(self.config.layers)
        if self.config.recipe == "official":
            chosen = {n: p for n, p in chosen.items() if not any(e in n.lower() for e in OFFICIAL_FROZEN)}
        return chosen

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        self.pool = list(data.pool)
        if self.traits.reads_pool(self.config) and not self.pool:
            raise ValueError(f"editor {self.config.name}: the KL term needs the memory pool, and data gives none "
                             "(raise data.pool_size or lower data.train_subsample)")

    def reset(self) -> None:
        super().reset()
        self.past = []

    def edit_state(self) -> dict:
        return {"weights": super().edit_state(), "past": [[e.prompt, e.target] for e in self.past]}

    def load_edit_state(self, state: dict) -> None:
        super().load_edit_state(state["weights"])
        self.past = [Example(f"past{i}", p, t) for i, (p, t) in enumerate(state["past"])]

    def edit(self, example: Example) -> EditResult:
        if self.config.recipe == "official":
            return self._edit_official(example)
        cfg, adapter = self.config, self.adapter
        params = list(self.trainable_parameters().values())
        optimizer = adam(params, cfg.lr)
        batch = adapter.encode([example.prompt], [example.target])
        _, forward = scored_forward(adapter, batch, params, cfg.mode)
        kl_chunks = self._kl_chunks(params) if cfg.kl_weight > 0 else []
        moved = False  # whether a step has moved the model off the pre-edit one, the KL's reference

        def look():
            logits = forward()

            def loss() -> Iterator[Tensor]:
                nonlocal moved
                yield adapter.loss(batch, logits)
                if not moved:  # the first step: the model is its own reference, KL and gradient zero
                    moved = True
                    return
                yield from self._kl_terms(kl_chunks)
            return bool(adapter.token_correct(batch, logits).all()), loss

        return EditResult(steps=fine_tune(optimizer, cfg.max_steps, look))

    def _kl_chunks(self, params: list[Tensor]) -> list[tuple[Any, Callable[[], Tensor]]]:
        """The KL term's pool sample in chunks of `kl_chunk`, each with the pre-edit model's outputs
        (from the same recording forward) and the function giving its current ones."""
        cfg, adapter = self.config, self.adapter
        sample = random.sample(self.pool, min(cfg.kl_batch, len(self.pool)))
        size = cfg.kl_chunk or (CPU_KL_CHUNK if adapter.device.type == "cpu" else max(len(sample), 1))
        if size < len(sample):  # chunks of similar lengths pad little; the KL sums over outputs, so
            # their order changes nothing else (zsRE's pool on SmolLM2, chunks of 16: a third fewer positions)
            sample = [sample[i] for i in adapter.by_length([e.prompt for e in sample], [e.target for e in sample])]
        chunks = []
        for i in range(0, len(sample), size):
            part = sample[i : i + size]
            encoded = adapter.encode([e.prompt for e in part], [e.target for e in part])
            reference, forward = scored_forward(adapter, encoded, params, cfg.mode, reference=True)
            chunks.append((adapter.task.kl_reference(reference), forward))  # read every step: prepared once
        return chunks

    def _kl_terms(self, chunks: list[tuple[Any, Callable[[], Tensor]]]) -> Iterator[Tensor]:
        """The weighted KL over all the sample's outputs as one term per chunk, its average weighted
        by its share of the outputs: the same value and gradient, each chunk's forward made only
        when its term is asked for, so one chunk's graph is in memory."""
        outputs = sum(len(reference) for reference, _ in chunks)
        for reference, kl_forward in chunks:
            yield self.config.kl_weight * len(reference) / outputs * self.adapter.task.kl(reference, kl_forward())

    # -- the published code's recipe -----------------------------------------------------------
    def _edit_loss(self, batch) -> Tensor:
        adapter = self.adapter
        adapter.model.train()  # every step with dropout on, as ft.py:184
        try:
            logits = adapter.scored_logits(batch)
        finally:
            adapter.model.eval()
        return adapter.task.smoothed_loss(logits, batch.targets, OFFICIAL_SMOOTHING[adapter.task])

    @contextmanager
    def _original_weights(self):
        """The fold's original model for a forward without gradient: the tuned tensors swapped."""
        params = self.trainable_parameters()
        current = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self._initial[n])
            try:
                yield
            finally:
                for n, p in params.items():
                    p.copy_(current[n])

    def _kl_references(self) -> tuple[list, list[Tensor], int]:
        """This step's KL inputs, freshly shuffled pool batches and past edits, with the fold's
        original model's outputs on them (one swap of the tuned tensors for all). Computed before
        the step's edit loss, whose graph must not see the swap."""
        adapter, past = self.adapter, self.past
        shuffled = random.sample(self.pool, len(self.pool))  # a reshuffled loader each step
        chunks = [shuffled[i : i + OFFICIAL_KL_BATCH] for i in range(0, len(shuffled), OFFICIAL_KL_BATCH)]
        chunks = chunks[: kl_batches_used(len(chunks), OFFICIAL_KL_BATCH, self.config.kl_batch, len(past))]
        chosen = past if len(past) < OFFICIAL_PAST else random.sample(past, OFFICIAL_PAST)
        groups = [*chunks, *[[e] for e in chosen]]
        batches = [adapter.encode([e.prompt for e in g], [e.target for e in g]) for g in groups]
        references = [self.references(g, self._original_weights) for g in groups]  # once per example
        return batches, references, len(chunks)

    def official_kl(self, inputs: tuple | None = None) -> Tensor | float:
        """KL to the fold's original model: pool batches as `published_kl` sums them, plus the
        past edits' KL divided by their count (utils.py:218-227). A step sums `official_kl_terms`
        instead, in its gradients (the same value, tested)."""
        batches, references, n_pool = inputs or self._kl_references()
        kls = [self.adapter.task.kl(ref, self.adapter.scored_logits(b)) for ref, b in zip(references, batches)]
        kl = published_kl(kls[:n_pool], OFFICIAL_KL_BATCH, self.config.kl_batch, len(self.past))
        if self.past:
            kl = kl + sum(kls[n_pool:]) / len(self.past)
        return kl

    def official_kl_terms(self, inputs: tuple | None = None) -> Iterator[Tensor]:
        """`official_kl`'s terms, each batch's KL times its weight, made one at a time: a step
        backwards each before the next is made, so one batch's graph is in memory."""
        batches, references, n_pool = inputs or self._kl_references()
        weights = published_kl_weights(n_pool, OFFICIAL_KL_BATCH, self.config.kl_batch, len(self.past))
        if self.past:  # each past edit a batch of its own
            weights += [1 / len(self.past)] * (len(batches) - n_pool)
        assert len(weights) == len(batches), "the pool batches were cut by kl_batches_used"
        for weight, reference, batch in zip(weights, references, batches):
            yield weight * self.adapter.task.kl(reference, self.adapter.scored_logits(batch))

    def _edit_official(self, example: Example) -> EditResult:
        cfg, adapter = self.config, self.adapter
        optimizer = torch.optim.Adam(list(self.trainable_parameters().values()), lr=cfg.lr)
        batch = adapter.encode([example.prompt], [example.target])
        steps = 0
        with torch.enable_grad():
            while True:
                with torch.no_grad():
                    if bool(adapter.token_correct(batch, adapter.scored_logits(batch)).all()):
                        break
                if steps > cfg.max_steps:  # the published check: max_steps + 1 steps at most
                    break
                inputs = self._kl_references() if cfg.kl_weight > 0 else None
                self._edit_loss(batch).backward()
                for term in self.official_kl_terms(inputs) if inputs is not None else ():
                    (cfg.kl_weight * term).backward()  # summed in the gradients, a batch's graph at a time
                optimizer.step()
                steps += 1
                optimizer.zero_grad()
        self.past.append(example)
        return EditResult(steps=steps)
