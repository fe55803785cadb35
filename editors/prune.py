"""PRUNE (Ma et al., 2024, "Perturbation-Restrained Sequential Model Editing"): the sum of a
fold's updates, dW = W_n - W_0, has its singular values at or above W_0's largest, s_max, shrunk
to log_b(s) - log_b(s_max) + s_max, which bounds the edited matrix's condition number.

Read in the published code: the authors' mjy1111/PRUNE at 046c2a6, `bl`
easyeditor/editors/bi_editor_loadw.py: the edits of a sequence are made and saved unrestrained; the
model that is evaluated after n of them is W_0 + U diag(F(s)) V^T over the rank of dW (bl:109-170,
func_log bl:56-61, func_logn bl:63-68). seqedit does the same after every edit: the next edit is
computed on the unrestrained weights (kept beside the model), the model that answers is restrained.
The AlphaEdit repository's MEMIT_prune (experiments/evaluate.py:303-327 at f5248d3) restrains once,
after the last edit, and adds the restrained sum to the already edited weight, W_n + F(dW), which
counts the edits twice; seqedit follows the PRUNE authors' W_0 + F(dW).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from benchmark.types import EditorData, Example
from editors.base import EditResult
from editors.configs.memit import PruneConfig  # noqa: F401  (its config, torch-free)
from editors.memit import MemitEditor


def restrained(delta: Tensor, s_max: float, base: float) -> tuple[Tensor, int]:
    """delta with its singular values s >= s_max replaced by log_b(s) - log_b(s_max) + s_max, over
    delta's numerical rank as numpy's matrix_rank counts it (bl:136, 154-159); also how many were."""
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    tol = S.max() * max(delta.shape) * torch.finfo(delta.dtype).eps if S.numel() else 0.0  # of the saved dtype
    rank = int((S > tol).sum())
    big = S >= s_max
    S = torch.where(big, torch.log(S.clamp(min=1e-300)) / math.log(base) - math.log(s_max, base) + s_max, S)
    out = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    return out.to(delta.dtype), int(big[:rank].sum())


class PruneEditor(MemitEditor):
    config_class = PruneConfig

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        params = self.trainable_parameters()
        self.s_max = {n: float(torch.linalg.matrix_norm(self._initial[n].double(), ord=2)) for n in params}
        self.raw: dict[str, Tensor] = {}

    def edit(self, example: Example) -> EditResult:
        params = self.trainable_parameters()
        with torch.no_grad():
            for name, value in self.raw.items():  # the next edit starts from the unrestrained weights
                params[name].copy_(value)
        result = super().edit(example)
        shrunk = 0
        with torch.no_grad():
            for name, weight in params.items():
                self.raw[name] = weight.detach().clone()
                delta, n = restrained(weight - self._initial[name], self.s_max[name], self.config.log_base)
                weight.copy_(self._initial[name] + delta)
                shrunk += n
        result.info["restrained_singular_values"] = shrunk
        return result

    def reset(self) -> None:
        super().reset()
        self.raw = {}

    def edit_state(self) -> dict[str, Any]:
        return {"memit": super().edit_state(), "raw": {n: v.clone() for n, v in self.raw.items()}}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        super().load_edit_state(state["memit"])
        self.raw = {n: v.clone() for n, v in state["raw"].items()}
