"""GRACE (Hartvigsen et al., NeurIPS 2023): a discrete codebook at one layer, the model untouched.

A codebook entry is (key, value, deferral radius eps, label). Keys are one block's FFN inner
activation (the input of its output projection: LLaMA's `down_proj`, GPT-J's `fc_out`, as the
published presets wrap them) at the example's read position (the last prompt token of a decoder,
`ModelAdapter.read_positions`). At inference the nearest key within its radius replaces that
block's FFN output there by its value; elsewhere, and for every query outside all radii, the
model runs as it was.

An edit (the published code, EasyEdit `easyeditor/models/grace/GRACE.py`, which carries the
authors' implementation):

* no key yet, or the nearest key farther than eps_init + its radius: a new key, radius eps_init
  (GRACE.py:207-219);
* the nearest key within that reach but with another label: a new key, and both radii become
  half the distance (split; GRACE.py:222-224, 179-181);
* the nearest key with the same label and farther than its radius: that radius grows to the
  distance (`eps_expand=coverage`), or the key moves halfway and its radius becomes the distance
  (`moving_average`) (GRACE.py:226-233);

then the chosen entry's value (the new one, or the nearest for an expansion) is trained with
Adam(lr) on the task loss for `max_steps` steps (n_iter; GRACE.py:92-105). A new value starts
cold, U(0, 1) (`value_init=cold`, the presets), or from the layer's current output (`warm`).

Fast: the network up to the codebook's layer runs once per edit; each step runs only what
follows the FFN (`ModelAdapter.capture`, exact at any layer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.types import Example
from editors.base import EditResult, HookedEditor, capture_at_read, read_position_block
from editors.configs.grace import GraceConfig  # noqa: F401  (its config, torch-free)


def default_layer(blocks: int) -> int:
    """The LLaMA-2-7B preset's depth (layers[27] of 32) on a model with `blocks` blocks."""
    return blocks * 27 // 32


class GraceEditor(HookedEditor):
    config_class = GraceConfig

    def __init__(self, config: GraceConfig, adapter):
        super().__init__(config, adapter)
        self.layer = read_position_block(adapter, "grace", config.layer, default_layer)
        self.site = adapter.ffn_site(self.layer)  # refuses a layer out of range
        self.keys = torch.zeros(0, 0)
        self.values = torch.zeros(0, 0)
        self.radii = torch.zeros(0)
        self.labels: list[Any] = []
        self._counts = {"added": 0, "split": 0, "expanded": 0}
        self._handles: list = []
        self._enable()

    # -- the codebook in the forward ------------------------------------------------------------
    def _lookup(self, inner: Tensor, out: Tensor):
        if not len(self.labels):
            return None
        distance, nearest = torch.cdist(inner.float(), self.keys).min(1)
        return self.values[nearest], distance <= self.radii[nearest]

    def _install(self) -> list:
        return self.adapter.rewrite_at_read(self._lookup, self.layer)

    def params_added(self) -> int:
        return int(self.keys.numel() + self.values.numel() + self.radii.numel())

    # -- editing ----------------------------------------------------------------------------------
    def edit(self, example: Example) -> EditResult:
        adapter, cfg = self.adapter, self.config
        batch = adapter.encode([example.prompt], [example.target])
        cache, query, row = capture_at_read(adapter, self.site, batch, self.layer)  # the codebook so far in place
        chosen, action = self._place(query, example.target, cache.ffn_out[row].detach().float())
        self._counts[action] += 1
        value = nn.Parameter(self.values[chosen].clone())
        optimizer = torch.optim.Adam([value], lr=cfg.lr)
        steps = 0
        with torch.enable_grad():
            for steps in range(1, cfg.max_steps + 1):
                out = cache.ffn_out.clone()
                out[row] = value.to(out.dtype)
                logits = cache.finish(out)
                if cfg.stop_when_correct and bool(adapter.example_scores(batch, logits.detach())[0] == 1):
                    steps -= 1
                    break
                loss = adapter.loss(batch, logits)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            self.values[chosen] = value.detach()
        return EditResult(steps=steps, info={"action": action, "entries": len(self.labels)})

    @torch.no_grad()
    def _place(self, query: Tensor, label: Any, current: Tensor) -> tuple[int, str]:
        """The codebook update of one edit; returns the entry whose value is trained and what was done."""
        cfg = self.config
        # drawn on the CPU, then moved: the same seed gives the same draws on any device
        value = torch.rand(current.shape, dtype=current.dtype).to(current.device) if cfg.value_init == "cold" \
            else current.clone()
        if not self.labels:
            return self._add(query, value, label), "added"
        distances = torch.cdist(query[None], self.keys)[0]
        distance, nearest = (float(v) for v in distances.min(0))
        nearest = int(nearest)
        if distance > cfg.eps_init + float(self.radii[nearest]):
            return self._add(query, value, label), "added"
        if self.labels[nearest] != label:  # a conflict: both radii split the distance
            new = self._add(query, value, label)
            self.radii[nearest] = distance / 2 - 1e-5
            self.radii[new] = distance / 2
            return new, "split"
        if distance > float(self.radii[nearest]):
            if cfg.eps_expand == "moving_average":
                self.keys[nearest] = 0.5 * self.keys[nearest] + 0.5 * query
            self.radii[nearest] = distance
        return nearest, "expanded"

    def _add(self, key: Tensor, value: Tensor, label: Any) -> int:
        if not self.labels:
            self.keys, self.values = key[None].clone(), value[None].clone()
            self.radii = torch.tensor([self.config.eps_init], device=key.device)
        else:
            self.keys = torch.cat([self.keys, key[None]])
            self.values = torch.cat([self.values, value[None]])
            self.radii = torch.cat([self.radii, self.radii.new_tensor([self.config.eps_init])])
        self.labels.append(label)
        return len(self.labels) - 1

    # -- folds and resume ---------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.keys, self.values, self.radii = self.keys[:0], self.values[:0], self.radii[:0]
        self.labels = []
        self._counts = dict.fromkeys(self._counts, 0)

    def edit_state(self) -> dict[str, Any]:
        return {"keys": self.keys.clone(), "values": self.values.clone(), "radii": self.radii.clone(),
                "labels": list(self.labels), "counts": dict(self._counts)}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        self.keys, self.values = state["keys"].clone(), state["values"].clone()
        self.radii, self.labels = state["radii"].clone(), list(state["labels"])
        self._counts = dict(state["counts"])

    def fold_report(self) -> dict[str, Any]:
        radii = self.radii.tolist()
        return {"entries": len(self.labels), **self._counts,
                "radius": {"min": min(radii), "mean": sum(radii) / len(radii), "max": max(radii)} if radii else None}
