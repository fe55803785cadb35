"""Keep the weights of the best validation epoch in memory.

Lightning's ModelCheckpoint writes pickled checkpoints, which can only be read back by unpickling
arbitrary objects; the training phases here need only the best weights, so they are copied in
memory when the monitored value improves (strictly, so ties keep the earlier epoch, as
ModelCheckpoint does) and loaded back after the fit. Frozen parameters (the base model under a
hypernetwork or scope classifier) never change during the fit, so they are not copied.
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
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict(keep_vars=True).items()
                          if not (isinstance(v, torch.nn.Parameter) and not v.requires_grad)}

    def restore(self, module: L.LightningModule) -> None:
        if self.state is not None:
            module.load_state_dict(self.state, strict=False)  # the frozen parameters are as they were
