"""FT-EWC: fine-tuning one weight matrix until the edit holds, with elastic weight consolidation
(Kirkpatrick et al. 2017) against the weights before the edit, weighted by a diagonal Fisher from
the most recent edits. A row of the GRACE and WISE tables.

Read in the published code: the GRACE authors' Thartvigsen/GRACE at f674183 (`fe`
grace/editors/ft_ewc.py, `mn` grace/main.py; grace/config/editor/ft_ewc.yaml). Per edit:
    loss = CE(edit) + ewc_lambda * sum F (theta - theta*)^2          (fe:55-73)
Adam at edit_lr, a fresh optimiser per edit (fe:52), up to n_iter steps, stopping before a step
once every answer token is the argmax (fe:60-63). F is the squared gradient of each of the last
`fisher_mem` edits' losses, this one included (it is appended to the history before the edit,
mn:157, 167), summed and divided by fisher_mem (fe:31-46).
Where seqedit differs, because the published function does not run as written or reads what it
did not mean: fe:12 keeps the parameter name as one string, so fe:37, 44 and 66 iterate over its
characters (a KeyError); seqedit uses the named weight. fe:35 calls backward without clearing the
gradients, so each edit's "squared gradient" is that of the running sum; seqedit squares each
edit's own. theta* (fe:39-45) adds the current weights once per history item and divides by
fisher_mem, so it is the weights before the edit scaled by (items / fisher_mem); seqedit anchors
at the weights before the edit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from benchmark.types import EditorData, Example
from editors.base import Editor, EditResult, scored_forward
from editors.configs.ft_ewc import FTEWCConfig  # noqa: F401  (its config, torch-free)
from editors.ft import adam, fine_tune


def default_layer(blocks: int) -> int:
    """The GPT2-XL preset's depth (h[35] of 48) on a model with `blocks` blocks."""
    return blocks * 35 // 48


class FTEWCEditor(Editor):
    config_class = FTEWCConfig

    def __init__(self, config: FTEWCConfig, adapter):
        super().__init__(config, adapter)
        layer = default_layer(len(adapter.layer_modules())) if config.layer is None else config.layer
        self.weight = adapter.ffn_site(layer).in_proj.weight
        self.history: list[Example] = []

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(self.weight)]: self.weight}

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        self.history = []

    def _fisher(self) -> Tensor:
        """The squared gradient of each of the last fisher_mem edits' losses, summed / fisher_mem."""
        adapter, fisher = self.adapter, torch.zeros_like(self.weight)
        for example in self.history[-self.config.fisher_mem:]:
            batch = adapter.encode([example.prompt], [example.target])
            _, forward = scored_forward(adapter, batch, [self.weight], "fast")
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(adapter.loss(batch, forward()), [self.weight])
            fisher += grad.pow(2)
        return fisher / self.config.fisher_mem

    def edit(self, example: Example) -> EditResult:
        cfg, adapter = self.config, self.adapter
        self.history.append(example)
        fisher, anchor = self._fisher(), self.weight.detach().clone()
        batch = adapter.encode([example.prompt], [example.target])
        _, forward = scored_forward(adapter, batch, [self.weight], "fast")

        def look():
            logits = forward()

            def loss() -> Tensor:
                penalty = (fisher * (self.weight - anchor).pow(2)).sum()
                return adapter.loss(batch, logits) + cfg.ewc_lambda * penalty
            return bool(adapter.token_correct(batch, logits).all()), loss

        return EditResult(steps=fine_tune(adam([self.weight], cfg.lr), cfg.max_steps, look))

    def reset(self) -> None:
        super().reset()
        self.history = []

    def edit_state(self) -> dict[str, Any]:
        return {"weights": super().edit_state(), "history": [[e.prompt, e.target] for e in self.history]}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        super().load_edit_state(state["weights"])
        self.history = [Example(f"past{i}", p, t) for i, (p, t) in enumerate(state["history"])]
