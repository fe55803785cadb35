"""WISE (Wang et al., NeurIPS 2024): a side memory, a copy of one block's FFN output projection
(LLaMA's `down_proj`), takes the edits; a router sends an input to the side memory where the
side memory's output differs enough from the main one's (the activation gap), else to the model
as it was. Read in the published code, EasyEdit at 14cea82 (`W` easyeditor/models/wise/WISE.py,
`U` wise/utils.py, `M` wise_main.py, `G` wise/merge/gta.py, `MU` wise/merge/utils.py; defaults
from hparams/WISE/llama-7b.yaml, the retrieval variant WISE-Retrieve).

One edit (W:150-250, M:18-35):
* the batch: the edit prompt under 11 context templates (the bare prompt and greedy 5- and
  10-token continuations of "I", "You", "Because", "Yes", "Q: "; U:426-450) with its answer, and
  one unrelated prompt, the published `loc_prompts[i]`: the i-th record of the *training* file's
  locality prompt and answer (EasyEdit examples/run_wise_editing.py:46-48 at aab6938, zsre_mend_train
  for edits of zsre_mend_edit), so never the edit's own locality prompt, which locality is scored on.
  Here (`unrelated=locality`) the i-th edit of a fold takes the locality pair of the i-th
  memory-pool record that has one (D'train, never an evaluated example); where no pool record has
  one (the facts set), a memory-pool fact drawn per edit, as `unrelated=pool` always does;
* SGD (lr 1.0, weight decay 1e-5) on the side memory for `max_steps` (70), the gradient masked to
  a random `mask_ratio` share of its entries (the knowledge shard, drawn when a shard starts;
  W:160-162, 470-476), each entry clamped to the original weight +- `norm_constraint` (W:252-258);
* loss = the answer's NLL + the routing margins on the gap g = mean over positions of
  |act(side out) - act(main out)| (act the model's FFN activation, W:30-45): mean of the positive
  parts of g_unrelated - g_edit + gamma, g_unrelated - alpha and beta - g_edit (W:280-322);
* stop where the loss moved less than 1e-4 and is below 0.02 (U:380-401); the edit's gap joins
  the shard's record, whose smallest value times `act_ratio` is the routing threshold.
Every `save_freq` edits the side memory is kept as a shard and a fresh copy starts; every
`merge_freq` edits the last shards are merged by TIES (G, MU:3-19). At inference, per example,
the side memory answers where its gap exceeds its threshold, and a kept shard where its gap is
larger still and above its own threshold (W:480-505).

Differences (README): the gaps and the NLL average over real positions only (the published code
counts padding in both); the router decides per example (the published code, at batch size 1,
does too; in a batch it takes one decision for all); the shard mask is drawn with torch.

Fast: the network up to the side memory runs once per edit; each step runs only what follows
the FFN (`ModelAdapter.capture`, exact at any layer).
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.models.base import installed
from benchmark.types import EditorData, Example
from editors.base import EditResult, HookedEditor
from editors.configs.wise import WiseConfig  # noqa: F401  (its config, torch-free)
from editors.grace import default_layer

TEMPLATE_STARTS = ["I", "You", "Because", "Yes", "Q: "]  # U:433
TEMPLATE_LENGTHS = (5, 10)  # length_params [[5, 5], [10, 5]]: one greedy continuation per start (M:20)
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def gap(main: Tensor, side: Tensor, act, mask: Tensor | None, infer: bool = False) -> Tensor:
    """[B] the activation gap of each example (W:30-45 `euc`): the mean over its positions of
    |act(side) - act(main)|; at inference over more than 100 positions, the largest."""
    distance = (act(side.float()) - act(main.float())).norm(dim=-1)  # [B, T]
    mask = torch.ones_like(distance) if mask is None else mask.to(distance.dtype)
    mean = (distance * mask).sum(1) / mask.sum(1).clamp(min=1)
    if infer:
        largest = distance.masked_fill(mask == 0, float("-inf")).max(1).values
        mean = torch.where(mask.sum(1) > 100, largest, mean)
    return mean


def positive_mean(x: Tensor) -> Tensor:
    """The mean of the positive entries, 0 where there is none (W:310-316)."""
    positive = x[x > 0]
    return positive.mean() if positive.numel() else x.new_zeros(())


def ties_merge(base: Tensor, shards: list[Tensor], weights: list[float], density: float) -> Tensor:
    """TIES (GTA('magnitude', 'sum', normalize=True), G:15-70): each shard's change from `base`
    keeps its `density` largest entries; entries whose sign disagrees with the weighted sum's are
    dropped; the rest are averaged by weight."""
    deltas = []
    for shard in shards:
        delta = shard - base
        if density < 1:
            k = int(density * delta.numel())
            keep = torch.zeros_like(delta).view(-1)
            keep[delta.abs().view(-1).float().topk(k).indices] = 1
            delta = delta * keep.view_as(delta)
        deltas.append(delta)
    stacked = torch.stack(deltas)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * base.dim())
    weighted = stacked * w
    majority = (weighted.sum(0) >= 0).to(base.dtype) * 2 - 1
    agree = (weighted.sign() == majority).to(base.dtype)
    divisor = (w * agree).sum(0)
    divisor[divisor == 0] = 1
    return (base + (weighted * agree).sum(0) / divisor).to(base.dtype)


class WiseEditor(HookedEditor):
    config_class = WiseConfig
    # decoder LMs, the method's models (EasyEdit's WISE edits causal LMs); an unrelated prompt per
    # edit from the memory pool
    traits = HookedEditor.traits.but(families=("decoder",), pool=True)

    def __init__(self, config: WiseConfig, adapter):
        super().__init__(config, adapter)
        blocks = len(adapter.layer_modules())
        self.layer = default_layer(blocks) if config.layer is None else config.layer
        self.site = adapter.ffn_site(self.layer)  # refuses a layer out of range
        self.act = ACTIVATIONS[self.site.activation]
        self.original = self.site.out_proj.weight.detach().clone()
        self.bias = self.site.out_proj.bias
        self.templates = ["{}"]
        self.pool: list[Example] = []
        self._fresh()
        self._handles: list = []
        self._enable()

    def _fresh(self) -> None:
        self.side = self.original.clone()  # the side memory being edited
        self.side_min_gap = float("inf")  # the smallest gap of its edits (routing threshold / act_ratio)
        self.shards: list[Tensor] = []
        self.shard_min_gaps: list[float] = []
        self.edits, self.merges = 0, 0
        self.mask: Tensor | None = None

    # -- the router in the forward ------------------------------------------------------------------
    def _install(self) -> list:
        return [self.site.out_proj.register_forward_hook(self._route)]

    def _route(self, module, args, output):
        if self.side_min_gap == float("inf") and not self.shards:
            return None  # nothing edited: the model as it was (the published threshold is 1e9)
        x, batch = args[0], self.adapter.in_flight
        mask = batch.valid_mask if batch is not None and batch.valid_mask.shape == output.shape[:2] else None
        ratio = self.config.act_ratio
        side = F.linear(x, self.side.to(x.dtype), self.bias)
        best = gap(output, side, self.act, mask, infer=True)
        out = torch.where((best < self.side_min_gap * ratio)[:, None, None], output, side)
        for shard, min_gap in zip(self.shards, self.shard_min_gaps):
            shard_out = F.linear(x, shard.to(x.dtype), self.bias)
            distance = gap(output, shard_out, self.act, mask, infer=True)
            use = (distance > best) & (distance > min_gap * ratio)
            out = torch.where(use[:, None, None], shard_out, out)
            best = torch.where(use, distance, best)
        return out.to(output.dtype)

    def params_added(self) -> int:
        """The side memory once it holds an edit, and every kept shard."""
        return int(self.side.numel()) * (int(self.side_min_gap < float("inf")) + len(self.shards))

    # -- set-up ---------------------------------------------------------------------------------------
    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        self.pool = list(data.pool)
        if not self.pool:
            raise ValueError("editor=wise draws an unrelated prompt per edit from the memory pool, and the data "
                             "gives none (raise data.pool_size or lower data.train_subsample)")
        # (prompt, answer) of the pool records' locality pairs: the published loc_prompts
        self.locality = [e.locality[0] for e in self.pool if e.locality] if self.config.unrelated == "locality" else []
        self.templates = ["{}", *self._templates()]

    @torch.no_grad()
    def _templates(self) -> list[str]:
        """Greedy continuations of the start words, 5 and 10 new tokens (U:426-450), each + ' {}'."""
        tok, out = self.adapter.tokenizer, []
        with self.disabled():
            for length in TEMPLATE_LENGTHS:
                for start in TEMPLATE_STARTS:
                    enc = tok([start], return_tensors="pt").to(self.adapter.device)
                    gen = self.model.generate(**enc, do_sample=False, max_new_tokens=length,
                                              pad_token_id=tok.pad_token_id or tok.eos_token_id)
                    text = tok.decode(gen[0], skip_special_tokens=True)
                    out.append(text.replace("{", " ").replace("}", " ") + " {}")
        return out

    # -- editing --------------------------------------------------------------------------------------
    def edit(self, example: Example) -> EditResult:
        cfg, adapter = self.config, self.adapter
        unrelated = self._unrelated()
        n = len(self.templates)
        batch = adapter.encode([t.format(example.prompt) for t in self.templates] + [unrelated[0]],
                               [example.target] * n + [unrelated[1]])
        x, main, finish = self._capture(batch)
        if self.edits % cfg.save_freq == 0:  # a new shard: a new random mask (W:160-162)
            # drawn on the CPU, then moved: the same seed gives the same draws on any device
            draw = torch.rand(self.side.shape, dtype=self.side.dtype)
            self.mask = (draw < cfg.mask_ratio).to(self.side)
        side = nn.Parameter(self.side.clone())
        optimizer = torch.optim.SGD([side], lr=cfg.lr, weight_decay=1e-5)
        alpha, beta, gamma = cfg.act_margin
        edit_rows = torch.isin(batch.owner, torch.arange(n, device=batch.owner.device))
        valid = batch.valid_mask
        previous, last, taken, edit_gap, first = 1e9, 1e9, 0, None, None
        with torch.enable_grad():
            for step in range(cfg.max_steps):
                new = F.linear(x, side.to(x.dtype), self.bias)
                logits = finish(new)
                token_nll = F.cross_entropy(logits[edit_rows].float(), batch.targets[edit_rows], reduction="none")
                per_row = torch.zeros(n, device=logits.device).index_add_(0, batch.owner[edit_rows], token_nll)
                counts = torch.bincount(batch.owner[edit_rows], minlength=n).clamp(min=1)
                nll = (per_row / counts).mean()
                g_edit = gap(main[:n], new[:n], self.act, valid[:n])
                g_unrelated = gap(main[n:], new[n:], self.act, valid[n:])
                margins = (positive_mean(g_unrelated.view(-1, 1) - g_edit + gamma)
                           + positive_mean(g_unrelated - alpha) + positive_mean(beta - g_edit))
                loss = nll + margins
                stop = abs(last - previous) <= 1e-4 and last <= 0.02  # the previous steps' losses (U:400)
                if stop or step == cfg.max_steps - 1:
                    edit_gap = float(g_edit.detach().mean())  # W:465-467, before the last step as published
                if stop:
                    break
                optimizer.zero_grad()
                loss.backward()
                side.grad *= self.mask
                optimizer.step()
                taken += 1
                previous, last = last, float(loss.detach())
                first = last if first is None else first
                with torch.no_grad():
                    side.copy_(torch.maximum(torch.minimum(side, self.original + cfg.norm_constraint),
                                             self.original - cfg.norm_constraint))
        self.side = side.detach()
        self.side_min_gap = min(self.side_min_gap, edit_gap)
        self._after_edit()
        return EditResult(steps=taken, info={"gap": edit_gap, "unrelated_gap": float(g_unrelated.detach()[0]),
                                             "loss_first": first, "loss_last": last,
                                             "shards": len(self.shards),
                                             "unrelated_from": "locality" if self.locality else "pool"})

    def _unrelated(self) -> tuple[str, object]:
        """This edit's unrelated (prompt, answer): the locality pair of the pool record paired with
        the edit by its index in the fold (run_wise_editing.py:46-48), else a random pool fact."""
        if self.locality:
            return self.locality[self.edits % len(self.locality)]
        fact = random.choice(self.pool)
        return fact.prompt, fact.target

    def _capture(self, batch):
        """The main output of the side memory's block at every position, its input, and `finish`:
        new outputs at every position -> the scored logits (the network after the FFN only)."""
        seen: dict[str, Tensor] = {}

        def keep(_m, args, output):
            seen.setdefault("x", args[0].detach())
            seen.setdefault("main", output.detach())

        with self.disabled(), installed([self.site.out_proj.register_forward_hook(keep)]):
            cache = self.adapter.capture(batch, self.layer)
        if self.site.is_last:  # the cache holds the scored rows only
            return seen["x"], seen["main"], lambda new: cache.finish(new[batch.score_mask])
        return seen["x"], seen["main"], lambda new: cache.finish(new.reshape(-1, new.shape[-1]))

    def _after_edit(self) -> None:
        """A full shard is kept and a new side memory starts (W:265-268, 440-446); every merge_freq
        edits the last shards merge into one by TIES (W:270-276, 412-433)."""
        cfg = self.config
        self.edits += 1
        if self.edits % cfg.save_freq == 0:
            self.shards.append(self.side.clone())
            self.shard_min_gaps.append(self.side_min_gap)
            self.side, self.side_min_gap = self.original.clone(), float("inf")
        if self.edits % cfg.merge_freq == 0:
            count = cfg.merge_freq // cfg.save_freq
            merged = ties_merge(self.original, self.shards[-count:], [cfg.weights / count] * count, cfg.densities)
            min_gap = min(self.shard_min_gaps[-count:])
            del self.shards[-count:], self.shard_min_gaps[-count:]
            self.shards.append(merged)
            self.shard_min_gaps.append(min_gap)
            self.side = self.original.clone()
            self.merges += 1

    # -- folds and resume -------------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._fresh()

    def edit_state(self) -> dict[str, Any]:
        return {"side": self.side.clone(), "side_min_gap": self.side_min_gap,
                "shards": [s.clone() for s in self.shards], "shard_min_gaps": list(self.shard_min_gaps),
                "edits": self.edits, "merges": self.merges,
                "mask": None if self.mask is None else self.mask.clone()}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        self.side, self.side_min_gap = state["side"].clone(), float(state["side_min_gap"])
        self.shards = [s.clone() for s in state["shards"]]
        self.shard_min_gaps = [float(g) for g in state["shard_min_gaps"]]
        self.edits, self.merges = int(state["edits"]), int(state["merges"])
        self.mask = None if state["mask"] is None else state["mask"].clone()

    def fold_report(self) -> dict[str, Any]:
        return {"edits": self.edits, "shards": len(self.shards), "merges": self.merges,
                "side_min_gap": None if self.side_min_gap == float("inf") else self.side_min_gap}
