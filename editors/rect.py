"""RECT (Gu et al., EMNLP 2024, "Model Editing Harms General Abilities of Large Language Models:
Regularization to the Rescue"): each update keeps only its entries of the largest relative change
|dW / W|; the rest are zeroed, leaving most of the weight as it was.

Read in the published code: the AlphaEdit repository's MEMIT_rect, the RECT row of its table
(jianghoucheng/AlphaEdit at f5248d3, `mr` memit/memit_rect_main.py): MEMIT computes every block's
update as usual (each block's keys read after the earlier blocks' full updates, mr:68 on), then
each update is masked against the weight it is added to (mr:50-61):
    rel = |dW / (W + 1e-8)|,  t = the k-th smallest of rel, k = int(numel (1 - keep)),  W[rel >= t] += dW
with keep = 0.4 there. The RECT authors' own code (JasonForJoy/Model-Editing-Hurt at 8f8d4dc,
easyeditor/models/rome/rome_main.py:26-33 and 76-79, commented out) zeroes 80% on ROME's update
(keep = 0.2). seqedit masks after all blocks of an edit are written, as mr does, then reads the
earlier-keys of `past_keys` (if set) on the masked model.
"""

from __future__ import annotations

import torch

from benchmark.types import Example
from editors.base import EditResult
from editors.configs.memit import RectConfig  # noqa: F401  (its config, torch-free)
from editors.memit import MemitEditor


def relative_change_mask(update: torch.Tensor, weight: torch.Tensor, keep: float) -> torch.Tensor:
    """The entries of `update` whose change relative to `weight` is among the largest `keep` (mr:57-60)."""
    rel = (update / (weight + 1e-8)).abs().reshape(-1)
    k = int(rel.numel() * (1 - keep))
    if k < 1:
        return torch.ones_like(update, dtype=torch.bool)
    return (rel >= torch.kthvalue(rel, k).values).reshape(update.shape)


class RectEditor(MemitEditor):
    config_class = RectConfig

    def edit(self, example: Example) -> EditResult:
        self._before = [site.out_proj.weight.detach().clone() for site in self.sites]
        self._deltas: dict[int, torch.Tensor] = {}
        return super().edit(example)

    @torch.no_grad()
    def _update(self, i: int, site, key: torch.Tensor, residual: torch.Tensor) -> None:
        # written whole, so the next block's keys see it (mr:68 on), and kept in float64: mr masks
        # and adds its float64 update (mr:46-61), where the difference of float32 weights would
        # have lost the digits that decide the entries near the threshold
        self._deltas[i] = self._delta(i, key, residual)
        site.out_proj.weight += self._deltas[i].to(site.out_proj.weight.dtype)

    @torch.no_grad()
    def _after_edit(self, texts: list[str], positions: list[int]) -> None:
        for i, (site, before) in enumerate(zip(self.sites, self._before)):
            update = self._deltas[i]
            mask = relative_change_mask(update, before, self.config.keep)
            site.out_proj.weight.copy_(before + (update * mask).to(before.dtype))
        self._before, self._deltas = [], {}
        super()._after_edit(texts, positions)
