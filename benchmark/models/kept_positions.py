"""Blocks rerun from a position on: where a change enters row i of a batch at position starts[i]
or later (v*'s delta, added at the subject's last token), a causal decoder's earlier positions
keep every block's hidden state, keys and values. `KeptPositions` records the keys and values
once and reruns each block on the later positions only, attending to the kept ones; everything
else (norms, FFNs, the head) is position-wise.

On zsRE's requests under ROME's prefixes the subject ends near the prompt's end, so the rerun
covers the prompt's last words and the answer: 27.5% of the texts' positions over three ROME edits
(`python -m benchmark.perf vstar`). Exact up to float rounding (the attention and the projections
sum over fewer rows at a time): the logits within 1e-5 of the full forward's, not bit for bit
(tests/test_suffix.py).

The same rerun serves a fine-tuned last block (`last_block_from_scored`, `live`): from each row's
first scored position on, the earlier positions' keys and values made anew at each call.

Served: decoder layers called as transformers' LLaMA-layout ones are (the hidden state, then the
keyword arguments `attention_mask` as a 4-D mask or None, `position_ids`, `position_embeddings`,
a cache under `cache` or `past_key_values`, `use_cache`, `cache_position`), with sdpa or eager
attention and no sliding window. Anything else returns None from `kept_positions`, and the caller
replays whole rows (`ModelAdapter.suffix`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from benchmark.models.base import BlockCall, EncodedBatch

CACHE_KEYS = ("cache", "past_key_values")
KNOWN = {"attention_mask", "position_ids", "position_embeddings", "use_cache", "cache_position", *CACHE_KEYS}


class _Recorder:
    """Stands in for transformers' Cache in one full replay: keeps each layer's keys and values of
    the first `width` positions, returns the layer's own unchanged."""

    def __init__(self, width: int):
        self.width, self.kept = width, {}

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.kept[layer_idx] = (key[:, :, : self.width].detach(), value[:, :, : self.width].detach())
        return key, value


class _Stopped(Exception):
    """Raised by `_KeysOnly` once a block's keys and values are made: nothing after them is read."""


class _KeysOnly:
    """Stands in for the Cache in a block's call on the kept positions (`live`): keeps the keys
    and values it is given, with their gradient, and stops the call there."""

    def __init__(self):
        self.kept = {}

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.kept[layer_idx] = (key, value)
        raise _Stopped


class _Kept:
    """Stands in for the Cache in a rerun: the kept keys and values joined before the rerun's own."""

    def __init__(self, kept: dict[int, tuple[Tensor, Tensor]]):
        self.kept = kept

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        old_key, old_value = self.kept[layer_idx]
        return torch.cat([old_key, key], dim=2), torch.cat([old_value, value], dim=2)


def _cache_key(call: BlockCall) -> str | None:
    """The keyword its layer takes the cache under, or None where the call is not one this serves."""
    if call.args[1:] or not set(call.kwargs) <= KNOWN | {"hidden_states"}:
        return None
    found = [k for k in CACHE_KEYS if k in call.kwargs]
    mask = call.kwargs.get("attention_mask")
    if len(found) != 1 or "position_embeddings" not in call.kwargs or (mask is not None and mask.dim() != 4):
        return None
    return found[0]


def _gather(value: Tensor, index: Tensor) -> Tensor:
    """value [1 or B, T, ...] at the positions index [B, Q] of each row."""
    value = value.expand(index.shape[0], *value.shape[1:])
    shape = (*index.shape, *value.shape[2:])
    return value.gather(1, index.reshape(*index.shape, *[1] * (value.dim() - 2)).expand(shape))


class KeptPositions:
    """Reruns blocks `first`.. of a recorded forward (`calls`) on the positions at or after `starts`.

    `live`: one block, the last, whose own weights may change between calls (a fine-tuned last
    block): its keys and values of the kept positions are made anew at each call from their
    recorded input (the block's attention stopped once they are made: no query, attention or FFN
    runs there), and the rerun finishes with the adapter's `head` on the scored rows, as
    `ModelAdapter.suffix` does."""

    def __init__(self, adapter, batch: EncodedBatch, calls: list[BlockCall], starts: Tensor, live: bool = False):
        if live and len(calls) != 1:
            raise ValueError("KeptPositions: live keys and values serve one block, the last")
        self.adapter, self.calls, self.live = adapter, calls, live
        device = calls[0].input().device
        starts = starts.to(device)
        lengths = batch.valid_mask.sum(1)  # right-padded rows: their real positions come first
        rerun = lengths - starts  # each row's positions rerun
        width = int(rerun.max())
        j = torch.arange(width, device=device)
        self.index = (starts[:, None] + j).clamp(max=batch.valid_mask.shape[1] - 1)  # [B, Q] positions rerun
        real = j[None, :] < rerun[:, None]  # [B, Q] rerun positions that are the row's own
        self.batch = dataclasses.replace(batch, score_mask=batch.score_mask.gather(1, self.index) & real)
        kept = int(starts.max())
        # query q of row i sees kept position p < starts[i], and rerun positions up to q of its own
        before = torch.arange(kept, device=device)[None, None, :] < starts[:, None, None]  # [B, 1, P]
        causal = (j[None, None, :] <= j[None, :, None]) & real[:, None, :]  # [B, Q, Q]
        allowed = torch.cat([before.expand(-1, width, -1), causal], dim=2)[:, None]  # [B, 1, Q, P + Q]
        recorder, self.key = _Recorder(kept), _cache_key(calls[0])
        mask = calls[0].kwargs.get("attention_mask")
        if mask is not None and mask.dtype != torch.bool:  # eager attention's additive mask
            allowed = torch.zeros(allowed.shape, dtype=mask.dtype, device=device).masked_fill(
                ~allowed, torch.finfo(mask.dtype).min)
        with torch.no_grad():  # the keys and values the rerun leaves as they are (live: made at each call)
            hidden = calls[0].input()
            for call in calls if not live else []:
                hidden = call.module(hidden, **{**call.kwargs, self.key: recorder})
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        self.kept = _Kept(recorder.kept)
        self.start = _gather(calls[0].input(), self.index)
        self.kwargs = [self._rerun_kwargs(call.kwargs, allowed) for call in calls]
        if self.live:  # the kept positions' input, and the block's arguments there
            self.prefix = calls[0].input()[:, :kept]
            given = calls[0].kwargs
            self.prefix_kwargs = {k: v for k, v in given.items()
                                  if k not in ("hidden_states", "cache_position", "attention_mask")}
            self.prefix_kwargs["position_embeddings"] = tuple(t[:, :kept] for t in given["position_embeddings"])
            if given.get("position_ids") is not None:
                self.prefix_kwargs["position_ids"] = given["position_ids"][:, :kept]

    def _rerun_kwargs(self, kwargs: dict[str, Any], allowed: Tensor) -> dict[str, Any]:
        out = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "cache_position")}
        out.update(attention_mask=allowed, position_embeddings=tuple(
            _gather(t, self.index) for t in kwargs["position_embeddings"]))
        out[self.key] = self.kept
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = _gather(kwargs["position_ids"], self.index)
        return out

    def __call__(self) -> Tensor:
        """The scored logits of the recorded batch with the blocks' current state and hooks (under
        autograd), in the order of the full forward's."""
        hidden = self.start
        if self.live:
            out = self.calls[0].module(hidden, **{**self.kwargs[0], self.key: self._live_kept()})
            hidden = out[0] if isinstance(out, tuple) else out
            return self.adapter.head(hidden[self.batch.score_mask])
        for call, kwargs in zip(self.calls, self.kwargs):
            out = call.module(hidden, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.adapter._scored_after_blocks(hidden, self.batch)

    def _live_kept(self) -> _Kept:
        """The block's keys and values of the kept positions under its current weights."""
        keys = _KeysOnly()
        try:
            self.calls[0].module(self.prefix, **{**self.prefix_kwargs, self.key: keys})
        except _Stopped:
            pass
        return _Kept(keys.kept)


def last_block_from_scored(adapter, batch: EncodedBatch) -> tuple[Tensor, KeptPositions] | None:
    """Where only the last block trains: (the scored logits, a rerun of that block from each row's
    first scored position on, `live`), else None where not served. Its output is read only at
    the scored positions, so the positions before them need only its keys and values: on zsRE's
    pool with SmolLM2, 2,195 real positions of which 489 are scored."""
    return kept_positions(adapter, batch, len(adapter.layer_modules()) - 1, _first_scored(batch), live=True)


def _first_scored(batch: EncodedBatch) -> Tensor:
    """[B] each row's first scored position (the row's width where it has none)."""
    mask = batch.score_mask
    return torch.where(mask, torch.arange(mask.shape[1], device=mask.device), mask.shape[1]).min(1).values


def kept_positions(adapter, batch: EncodedBatch, first: int, starts: Tensor, live: bool = False):
    """(the recorded forward's scored logits, a rerun from `starts` on) where the adapter's blocks
    are served (module docstring), else None. `starts[i]`: no position of row i before it may
    change while the rerun is used; every scored position must be at or after it. `live`: see
    `KeptPositions`."""
    if not getattr(adapter, "reruns_from_positions", False):
        return None
    config = adapter.model.config
    if config._attn_implementation not in ("sdpa", "eager") or getattr(config, "sliding_window", None):
        return None
    logits, calls = adapter.recorded_calls(batch, first)
    if any(_cache_key(call) is None for call in calls):
        return None
    first_scored = _first_scored(batch)
    if bool((starts.to(first_scored.device) > first_scored).any()) or bool((starts < 0).any()):
        raise ValueError("kept_positions: a scored position lies before its row's start")
    return logits, KeptPositions(adapter, batch, calls, starts, live)
