"""Fine-tuning baselines (T-Patcher App. B): FT(all), FT(last), FT(all)+KL, FT(last)+KL.

Adam at lr 1e-5 on the edit example until the model gets it right, within `max_steps`. The KL
variants add KL(f_pre || f) on `kl_batch` examples sampled from the memory set, f_pre being the
model before this edit; its outputs are computed once per edit, since they do not change.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.registry import EDITORS
from data.base import CLASSIFICATION, EditorData, Example
from editors.base import Editor, EditorConfig, EditResult


@dataclass
class FTConfig(EditorConfig):
    layers: str = field(default="all", metadata={"help": "all | last: which parameters are fine-tuned"})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate"})
    kl_weight: float = field(default=0.0, metadata={"help": "weight of the KL term; 0 is plain FT"})
    kl_batch: int = field(default=512, metadata={"help": "memory examples sampled for the KL term"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers not in ("all", "last"):
            raise ValueError(f"editor.layers must be all or last, got {self.layers!r}")
        if self.lr <= 0 or self.kl_weight < 0 or self.kl_batch < 1:
            raise ValueError("editor.lr > 0, editor.kl_weight >= 0 and editor.kl_batch >= 1 are required")


@dataclass
class FTLastConfig(FTConfig):
    layers: str = "last"


@dataclass
class FTKLAllConfig(FTConfig):
    kl_weight: float = 1.0


@dataclass
class FTKLLastConfig(FTConfig):
    layers: str = "last"
    kl_weight: float = 1.0


def output_kl(task: str, reference: Tensor, logits: Tensor) -> Tensor:
    """KL(reference || current) over the scored outputs (Bernoulli for classification)."""
    if task == CLASSIFICATION:
        ref = torch.stack([F.logsigmoid(-reference), F.logsigmoid(reference)], -1)
        cur = torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], -1)
    else:
        ref, cur = F.log_softmax(reference.float(), -1), F.log_softmax(logits.float(), -1)
    return F.kl_div(cur, ref, log_target=True, reduction="batchmean")


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where torch has one for these tensors: on CPU it steps a 135M
    parameter model in a quarter of the default loop's time (0.29 s vs 1.13 s, SmolLM2)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


class FTEditor(Editor):
    config_class = FTConfig

    def __init__(self, config: FTConfig, adapter):
        super().__init__(config, adapter)
        self.memory: list[Example] = []

    @property
    def needs_memory(self) -> bool:  # declared per instance: only the KL variants read memory
        return self.config.kl_weight > 0

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return self.adapter.select_parameters(self.config.layers)

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        self.memory = list(data.memory)
        if self.needs_memory and not self.memory:
            raise ValueError(f"editor {self.config.name}: the KL term needs a memory set, and data gives none")

    def edit(self, example: Example) -> EditResult:
        cfg, adapter = self.config, self.adapter
        params = list(self.trainable_parameters().values())
        optimizer = adam(params, cfg.lr)
        batch = adapter.encode([example.prompt], [example.target])
        kl_batch = reference = None
        if cfg.kl_weight > 0:
            sample = random.sample(self.memory, min(cfg.kl_batch, len(self.memory)))
            kl_batch = adapter.encode([e.prompt for e in sample], [e.target for e in sample])
            with torch.no_grad():
                reference = adapter.scored_logits(kl_batch)
        steps = 0
        with torch.enable_grad():
            for steps in range(cfg.max_steps + 1):
                logits = adapter.scored_logits(batch)
                if bool(adapter.token_correct(batch, logits).all()) or steps == cfg.max_steps:
                    break
                loss = adapter.loss(batch, logits)
                if kl_batch is not None:
                    loss = loss + cfg.kl_weight * output_kl(adapter.task, reference, adapter.scored_logits(kl_batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return EditResult(steps=steps)


EDITORS.register("ft_all", FTEditor, FTConfig, "fine-tune all parameters with Adam until the edit holds")
EDITORS.register("ft_last", FTEditor, FTLastConfig, "fine-tune the last transformer layer until the edit holds")
EDITORS.register("ft_kl_all", FTEditor, FTKLAllConfig, "FT(all) plus KL to the pre-edit model on memory samples")
EDITORS.register("ft_kl_last", FTEditor, FTKLLastConfig, "FT(last) plus KL to the pre-edit model on memory samples")
