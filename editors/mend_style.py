"""`mend_style`: a re-implementation of MEND (Mitchell et al. 2022, "Fast Model Editing at Scale")
whose network and training recipe differ from the published code's (eric-mitchell/mend; the
README's recipe table lists each difference), so its numbers are MEND-style, not MEND's.

For each edited linear layer the gradient of the edit loss is rank-1 per position: delta_t u_t^T.
MEND passes each pair (u_t, delta_t), normalised by running statistics, through a small MLP and
uses the outputs (u~_t, delta~_t) as a new rank-1 decomposition: dW = -lr_l * sum_t delta~_t u~_t^T.
One network is shared by the layers of the same shape, each layer with its own scale and offset
(their "layer-specific" conditioning); lr_l is learned per layer from `edit_lr`. The network's
hidden blocks are low-rank residual MLPs initialised to the identity, so an untrained MEND is
gradient descent on normalised factors. Training minimises c_edit * L_edit + c_loc * KL_loc.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.types import Example
from editors.configs.mend_style import MENDConfig  # noqa: F401  (its config, torch-free)
from editors.hypernet import HypernetEditor


class RunningNorm(nn.Module):
    """Standardise features by their mean and variance over all rows seen in training."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("mean_sq", torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                n, b = self.count, len(x)
                self.mean.mul_(n / (n + b)).add_(x.sum(0) / (n + b))
                self.mean_sq.mul_(n / (n + b)).add_((x**2).sum(0) / (n + b))
                self.count.add_(b)
        std = (self.mean_sq - self.mean**2).clamp(min=1e-12).sqrt()
        return (x - self.mean) / (std + 1e-6)


class GradientTransform(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, modes: int, rank: int, hidden_layers: int):
        super().__init__()
        width = in_dim + out_dim
        rank = min(rank, width)
        self.in_dim = in_dim
        self.norm_u, self.norm_d = RunningNorm(in_dim), RunningNorm(out_dim)
        self.down = nn.ModuleList(nn.Linear(width, rank) for _ in range(hidden_layers))
        self.up = nn.ModuleList(nn.Linear(rank, width) for _ in range(hidden_layers))
        for up in self.up:  # identity at initialisation
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.scale = nn.Parameter(torch.ones(modes, width))
        self.shift = nn.Parameter(torch.zeros(modes, width))

    def forward(self, u: Tensor, delta: Tensor, mode: int) -> tuple[Tensor, Tensor]:
        z = torch.cat([self.norm_u(u), self.norm_d(delta)], -1)
        for down, up in zip(self.down, self.up):
            z = z + up(torch.relu(down(z)))
            z = z * self.scale[mode] + self.shift[mode]
        return z[:, : self.in_dim], z[:, self.in_dim :]


class MENDEditor(HypernetEditor):
    config_class = MENDConfig
    training_version = 2  # 2: norms calibrated before training

    def __init__(self, config: MENDConfig, adapter):
        super().__init__(config, adapter)
        shapes = sorted({tuple(m.weight.shape) for _, m in self.sites})
        self.shape_key = {shape: f"{shape[0]}x{shape[1]}" for shape in shapes}
        modes = {shape: [i for i, (_, m) in enumerate(self.sites) if tuple(m.weight.shape) == shape]
                 for shape in shapes}
        self.mode = {i: modes[tuple(m.weight.shape)].index(i) for i, (_, m) in enumerate(self.sites)}
        self.hypernet = nn.ModuleDict({
            self.shape_key[(out_dim, in_dim)]: GradientTransform(in_dim, out_dim, len(modes[(out_dim, in_dim)]),
                                                                 config.rank, config.hidden_layers)
            for out_dim, in_dim in shapes}).to(adapter.device)
        self.hypernet.eval()  # training mode only inside the training phase's fit

    def updates(self, example: Example, target: Any, grads: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        out = []
        for i, ((_, module), (u, delta)) in enumerate(zip(self.sites, grads)):
            net = self.hypernet[self.shape_key[tuple(module.weight.shape)]]
            pseudo_u, pseudo_delta = net(u, delta, self.mode[i])
            out.append(-self.log_lr[i].exp() * (pseudo_delta.T @ pseudo_u))
        return out

    @torch.no_grad()
    def calibrate(self, examples: list[Example], targets: list[Any]) -> None:
        """Running statistics of (u, delta) from training edits before the first step, so that
        `edit_lr` applies to normalised factors from the start (MEND initialises its norms so)."""
        self.hypernet.train()
        for example, target in zip(examples, targets):
            grads = self.gradients([example.prompt], [target])
            for (_, module), (u, delta) in zip(self.sites, grads):
                net = self.hypernet[self.shape_key[tuple(module.weight.shape)]]
                net.norm_u(u), net.norm_d(delta)

    def meta_loss(self, edit_loss: Tensor, locality_kl: Tensor) -> Tensor:
        return self.config.edit_weight * edit_loss + self.config.locality_weight * locality_kl
