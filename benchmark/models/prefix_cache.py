"""Evaluation from a cached prefix: a batch scored before reruns only the blocks an edit can change.

The loop scores the same examples again and again (D_tr and D_test at every evaluation, a stream
example before and after its edit), while most editors change one block or a few last ones. What
enters the first block an editor can change (`Editor.edited_from`) is then the same every time, so
`PrefixCache` records it, with the call of every later block (masks, rotary tables), in the forward
that first scores a batch (its logits are that forward's own), and later runs only those blocks
and what follows them, exactly as the model's forward does (`ModelAdapter._scored_after_blocks`).

Checked by construction at every use, not trusted: the entries hold only while everything outside
the replayed blocks is as it was when they were captured: every parameter's and buffer's storage
and version counter (any in-place write under no_grad, `copy_`, an optimiser step, a new tensor
assigned, a move to another device), every module's hooks and train/eval mode, the global module
hooks, and the block objects themselves. On any difference the entries are dropped and the full
forward runs (and is captured anew), so an editor that changes more than it declares costs time,
never exactness. Not seen: writes through a tensor's `.data`, which bypass version counters (no
editor here uses them). A family that cannot finish its forward from the last block's output
(`replays_blocks` False: seq2seq) always runs the full forward, as does a model in train mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.models.base import BlockCall, EncodedBatch, ModelAdapter


def modules_state(modules: list[torch.nn.Module]) -> tuple:
    """What the outputs of these modules rest on, to compare with an earlier call: each one's
    parameters and buffers (storage, version counter, device), train/eval mode and hooks, and the
    global module hooks. Equal states give equal outputs (but for writes through `.data`)."""
    state = []
    for module in modules:
        tensors = [*module._parameters.values(), *module._buffers.values()]
        state.append((id(module), module.training, tuple(module._forward_pre_hooks), tuple(module._forward_hooks),
                      tuple((t.data_ptr(), t._version, t.device.type) for t in tensors if t is not None)))
    hooks = torch.nn.modules.module
    return tuple(hooks._global_forward_pre_hooks), tuple(hooks._global_forward_hooks), tuple(state)


@dataclass
class _Entry:
    batch: EncodedBatch
    start: Tensor  # the input of block `first` in the captured forward
    calls: list[BlockCall]  # block first.. as called there, their hidden input dropped
    bytes: int


def _tensor_bytes(value, seen: set[int]) -> int:
    """Bytes of the tensors in a call's arguments, each storage counted once."""
    if isinstance(value, Tensor):
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen:
            return 0
        seen.add(ptr)
        return value.untyped_storage().nbytes()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    return 0


class PrefixCache:
    """The replayable batches of one adapter, where edits change blocks `first`.. only (None:
    anything, so nothing is cached). The loop owns it and lends it to the adapter for its own
    evaluations only (`lent`): while an editor edits, nothing it holds reaches these batches."""

    def __init__(self, adapter: ModelAdapter, first: int | None, max_bytes: int):
        blocks = len(adapter.layer_modules())
        if first is not None and not 0 <= first < blocks:
            raise ValueError(f"edits from block {first}: the model has blocks 0..{blocks - 1}")
        self.adapter, self.first, self.max_bytes = adapter, first, max_bytes
        self.entries: dict[tuple, _Entry] = {}
        self.bytes = 0
        self.fingerprint: tuple | None = None
        self.stats = {"replayed": 0, "captured": 0, "uncached": 0, "dropped": 0}

    @contextmanager
    def lent(self) -> Iterator[None]:
        """The adapter's `scores` go through this cache inside the with-block only."""
        self.adapter.prefix = self
        try:
            yield
        finally:
            self.adapter.prefix = None

    def clear(self) -> None:
        self.entries, self.bytes, self.fingerprint = {}, 0, None

    @property
    def active(self) -> bool:
        return (self.first is not None and self.max_bytes > 0 and not self.adapter.model.training
                and self.adapter.replays_blocks)

    def _current(self) -> tuple:
        """Everything whose change could alter what enters block `first` or how blocks are called."""
        blocks = list(self.adapter.layer_modules())[self.first :]
        replayed = {id(m) for block in blocks for m in block.modules()}
        kept = [m for m in self.adapter.model.modules() if id(m) not in replayed]
        return tuple(map(id, blocks)), modules_state(kept)

    def check(self) -> bool:
        """Whether cached entries may be used now; drops them where anything they rest on changed."""
        if not self.active:
            return False
        now = self._current()
        if self.fingerprint is not None and now != self.fingerprint:
            self.stats["dropped"] += len(self.entries)
            self.clear()
        self.fingerprint = now
        return True

    def logits(self, prompts: list[str], targets: list) -> tuple[EncodedBatch, Tensor]:
        """The encoded batch of (prompts, targets) and its scored logits, after `check()`."""
        key = (tuple(prompts), tuple(map(repr, targets)))
        entry = self.entries.get(key)
        if entry is not None:
            self.stats["replayed"] += 1
            return entry.batch, self._replay(entry)
        batch = self.adapter.encode(prompts, targets)
        logits, entry = self._capture(batch)
        if self.bytes + entry.bytes <= self.max_bytes:
            self.entries[key], self.bytes = entry, self.bytes + entry.bytes
            self.stats["captured"] += 1
        else:
            self.stats["uncached"] += 1
        return batch, logits

    def _capture(self, batch: EncodedBatch) -> tuple[Tensor, _Entry]:
        logits, calls = self.adapter.recorded_calls(batch, self.first)
        start, kept = calls[0].input(), [call.without_input() for call in calls]
        seen: set[int] = set()
        size = _tensor_bytes(start, seen) + sum(_tensor_bytes((c.args, c.kwargs), seen) for c in kept)
        return logits, _Entry(batch, start, kept, size)

    def _replay(self, entry: _Entry) -> Tensor:
        adapter = self.adapter
        adapter.in_flight = entry.batch  # hooks acting at the read position see the batch, as in `_run`
        try:
            hidden = entry.start
            for call in entry.calls:
                hidden = call(hidden)
            return adapter._scored_after_blocks(hidden, entry.batch)
        finally:
            adapter.in_flight = None
