"""Constrained fine-tuning (Zhu et al. 2020, "Modifying Memories in Transformer Models").

Fine-tune the chosen parameters on the edit under ||theta - theta_0|| <= delta, solved by
projected Adam (their Algorithm 1, App. D): an Adam step, then the projection onto the constraint
set. theta_0 is the model before editing began (the fold's initial model), so the bound holds for
the sum of all edits of a fold, as in the paper's batch setting; in the sequential stream each
mistake is trained until the model gets it right or `max_steps`.

* `norm=linf` (their default, "consistently more stable"): element-wise clamp of theta - theta_0
  to [-delta, delta]. `norm=l2`: rescale theta - theta_0 to length delta when longer; the norm is
  taken over all tuned parameters together, as the constraint is on theta.
* `block`: one transformer block by index (0 .. L-1; a seq2seq model's decoder blocks),
  `embeddings`, `last` or `all`.
* `mix=ftm` trains on the modified fact only; `mix=fta` adds, in every step, as many examples of
  unmodified facts as there are modified ones (their App. B), drawn from the memory pool (facts
  of D'train outside D_tr). Never from D_tr, on which A_F\\S, TrainR (and T-REx's TestR) are
  measured: an editor is not handed it (`EditorData`).
* `delta=inf` is plain fine-tuning of the chosen parameters.
* Every step trains on all the fact's training forms (its supporting evidence, `Example.forms`;
  the edit prompt alone where a dataset has none). In the stream an edit runs until the edit
  prompt is right or `max_steps`; in `loop.mode=batch` (Zhu et al., Sec. 4 and App. B) the fold's
  facts are edited together: `epochs` passes over all their forms in shuffled minibatches of
  `batch_size` (their 10 and 128), FTA adding `batch_size` unmodified forms to each.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from benchmark.types import EditorData, Example, with_training_forms
from editors.base import Editor, EditResult, scored_forward
from editors.configs.constrained_ft import ConstrainedFTConfig  # noqa: F401  (its config, torch-free)
from editors.ft import adam, descend, fine_tune


@torch.no_grad()
def project(params: list[Tensor], initial: list[Tensor], delta: float, norm: str) -> None:
    """In place: the nearest point of {theta : ||theta - theta_0|| <= delta} (App. D)."""
    if math.isinf(delta):
        return
    if norm == "linf":
        for p, p0 in zip(params, initial):
            p.copy_(p0 + (p - p0).clamp_(-delta, delta))
        return
    length = torch.sqrt(sum(((p - p0).double() ** 2).sum() for p, p0 in zip(params, initial)))
    if length > delta:
        scale = delta / float(length)
        for p, p0 in zip(params, initial):
            p.copy_(p0 + (p - p0) * scale)


class ConstrainedFTEditor(Editor):
    config_class = ConstrainedFTConfig
    traits = Editor.traits.but(batches=True, pool=lambda c: c.mix == "fta")  # FTA mixes in unmodified facts

    def __init__(self, config: ConstrainedFTConfig, adapter):
        super().__init__(config, adapter)
        self.unmodified: list[Example] = []

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return self.adapter.select_parameters(self.config.block)

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        self.unmodified = with_training_forms(data.pool)
        if self.traits.reads_pool(self.config) and not self.unmodified:
            raise ValueError("editor.mix=fta needs unmodified facts from the memory pool, and the data gives none "
                             "(raise data.pool_size or lower data.train_subsample)")

    def step_examples(self, modified: list[Example]) -> list[Example]:
        """One minibatch: the modified forms, plus (FTA) as many unmodified forms, fresh each step."""
        if self.config.mix == "ftm":
            return modified
        return [*modified, *random.sample(self.unmodified, min(len(modified), len(self.unmodified)))]

    def _loss(self, examples: list[Example]) -> Tensor:
        batch = self.adapter.encode([e.prompt for e in examples], [e.target for e in examples])
        return self.adapter.loss(batch, self.adapter.scored_logits(batch))

    def _projection(self, params: list[Tensor], initial: list[Tensor]):
        """After each Adam step, back into ||theta - theta_0|| <= delta (their App. D)."""
        return lambda: project(params, initial, self.config.delta, self.config.norm)

    def _optimiser(self):
        tuned = self.trainable_parameters()
        params, initial = list(tuned.values()), [self._initial[n] for n in tuned]
        return adam(params, self.config.lr), params, initial

    def edit(self, example: Example) -> EditResult:
        cfg, adapter = self.config, self.adapter
        optimizer, params, initial = self._optimiser()
        probe = adapter.encode([example.prompt], [example.target])
        forms = with_training_forms([example])
        # FTM trains on the same forms every step: their prefix is recorded once (fast mode); FTA
        # draws new unmodified facts each step, so it runs the full forward
        fixed = cfg.mix == "ftm"
        batch = adapter.encode([e.prompt for e in forms], [e.target for e in forms]) if fixed else None
        _, forward = scored_forward(adapter, batch, params, cfg.mode) if fixed else (None, None)
        # the edit prompt alone (no other forms): the step's own forward is also the check
        same = fixed and len(forms) == 1
        _, check = scored_forward(adapter, probe, params, cfg.mode) if not same else (None, None)

        def look():
            logits = forward() if same else None
            with torch.no_grad():
                holds = bool(adapter.token_correct(probe, logits.detach() if same else check()).all())
            if not fixed:  # FTA: a fresh minibatch each step
                return holds, lambda: self._loss(self.step_examples(forms))
            return holds, lambda: adapter.loss(batch, logits if same else forward())

        steps = fine_tune(optimizer, cfg.max_steps, look, self._projection(params, initial))
        return EditResult(steps=steps, info={"distance": self.distance()})

    def edit_batch(self, examples: list[Example]) -> EditResult:
        """Zhu et al.'s batch setting: fixed epochs over every form of every fact; no stop rule."""
        cfg = self.config
        optimizer, params, initial = self._optimiser()
        forms, steps = with_training_forms(examples), 0
        with torch.enable_grad():
            for _ in range(cfg.epochs):
                random.shuffle(forms)
                for start in range(0, len(forms), cfg.batch_size):
                    minibatch = self.step_examples(forms[start : start + cfg.batch_size])
                    descend(optimizer, self._loss(minibatch), self._projection(params, initial))
                    steps += 1
        return EditResult(steps=steps, info={"distance": self.distance(), "forms": len(forms)})

    @torch.no_grad()
    def distance(self) -> float:
        """||theta - theta_0|| in the configured norm, over the tuned parameters."""
        diffs = [(p - self._initial[n]).double() for n, p in self.trainable_parameters().items()]
        if self.config.norm == "linf":
            return max(float(d.abs().max()) for d in diffs)
        return float(torch.sqrt(sum((d**2).sum() for d in diffs)))
