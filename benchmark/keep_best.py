"""Keep the weights of the best validation epoch in memory.

Lightning's ModelCheckpoint writes pickled checkpoints that can only be read back with
`torch.load(weights_only=False)`; the training phases here need only the best weights, so they are
copied in memory when the monitored value improves (strictly, so ties keep the earlier epoch, as
ModelCheckpoint does) and loaded back after the fit.
"""

from __future__ import annotations

import lightning as L
import torch


class KeepBest(L.Callback):
    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        value = float(value)
        if self.best is None or value > self.best:
            self.best = value
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def restore(self, module: L.LightningModule) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)
