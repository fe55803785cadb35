"""DEFER, the adaptor baseline of the GRACE paper (Hartvigsen et al., NeurIPS 2023): at one layer a
gate d = sigmoid(w . q + b) reads the layer's input q and, where d >= threshold, a linear map of q
replaces the layer's output; the gate and the map are trained on each edit in turn.

Read in the published code: the GRACE authors' Thartvigsen/GRACE at f674183 (`gd`
grace/editors/defer.py; grace/config/editor/defer.yaml). The adaptor (gd:73-115): `defer` a
Linear(d_in, 1), `predict_values` a Linear(d_in, d_out), query q = the wrapped layer's input at
the read token (gd:103-105); training mixes d * values + (1 - d) * output (gd:111-112), inference
replaces the output where d >= 0.5 (gd:113-114), and before the first edit the layer runs as it was
(gd:100-101). An edit: a fresh Adam over the adaptor at edit_lr, n_iter steps of the task loss on
the edit alone, no early stop (gd:50-71).
seqedit wraps the block's FFN output projection (GRACE's site here; the authors' T5 preset wraps
that same `wo`, their GPT2-XL preset `c_fc`) and acts at the read position, as seqedit's GRACE does;
the published adaptor writes the one value over every position of the sequence (gd:112, 114).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.models.base import linear_shape
from benchmark.types import Example
from editors.base import EditResult, HookedEditor, capture_at_read, read_position_block
from editors.configs.defer import DeferConfig  # noqa: F401  (its config, torch-free)
from editors.grace import default_layer


class DeferEditor(HookedEditor):
    config_class = DeferConfig

    def __init__(self, config: DeferConfig, adapter):
        super().__init__(config, adapter)
        self.layer = read_position_block(adapter, "defer", config.layer, default_layer)  # GRACE's block by default
        self.site = adapter.ffn_site(self.layer)
        d_ff = linear_shape(self.site.out_proj)[0]  # the FFN's inner width: the output projection's input
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.gate = nn.Linear(d_ff, 1).to(adapter.device)
            self.values = nn.Linear(d_ff, self.site.width).to(adapter.device)
        self.trained = False
        self._handles: list = []
        self._enable()

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {**{f"gate.{n}": p for n, p in self.gate.named_parameters()},
                **{f"values.{n}": p for n, p in self.values.named_parameters()}}

    def params_added(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values()) if self.trained else 0

    def _answer(self, inner: Tensor, _out: Tensor):
        if not self.trained:
            return None
        gate = torch.sigmoid(self.gate(inner.float()))[:, 0]
        return self.values(inner.float()), gate >= self.config.threshold

    def _install(self) -> list:
        return self.adapter.rewrite_at_read(self._answer, self.layer)

    def edit(self, example: Example) -> EditResult:
        adapter, cfg = self.adapter, self.config
        batch = adapter.encode([example.prompt], [example.target])
        with self.disabled():  # the layer's own output: training mixes into it
            cache, query, row = capture_at_read(adapter, self.site, batch, self.layer)
        original = cache.ffn_out[row].detach().float()
        optimizer = torch.optim.Adam(list(self.trainable_parameters().values()), lr=cfg.lr)
        self.trained, steps = True, 0
        with torch.enable_grad():
            for steps in range(1, cfg.max_steps + 1):
                gate, values = torch.sigmoid(self.gate(query)), self.values(query)
                if cfg.stop_when_correct and self._holds(cache, row, gate, values, original, batch):
                    steps -= 1
                    break
                out = cache.ffn_out.clone()
                out[row] = (gate * values + (1 - gate) * original).to(out.dtype)
                loss = adapter.loss(batch, cache.finish(out))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return EditResult(steps=steps, info={"gate": float(torch.sigmoid(self.gate(query)))})

    @torch.no_grad()
    def _holds(self, cache, row: int, gate: Tensor, values: Tensor, original: Tensor, batch) -> bool:
        """Whether the edit holds as the model will answer it: the hard gate (gd:113-114), not the
        training mixture."""
        out = cache.ffn_out.clone()
        out[row] = (values if float(gate) >= self.config.threshold else original).to(out.dtype)
        return bool(self.adapter.example_scores(batch, cache.finish(out))[0] == 1)

    # -- folds and resume ---------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.trained = False

    def edit_state(self) -> dict[str, Any]:
        return {"weights": super().edit_state(), "trained": self.trained}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        super().load_edit_state(state["weights"])
        self.trained = bool(state["trained"])
