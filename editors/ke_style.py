"""`ke_style`: a re-implementation of KnowledgeEditor (De Cao et al. 2021, "Editing Factual
Knowledge in Language Models") whose edited weights, conditioning, gates and optimiser differ from
the published code's (nicola-decao/KnowledgeEditor; the README's recipe table lists each), so its
numbers are KE-style, not KE's.

A hypernetwork reads the edit, the input x with its wanted answer a, through a bidirectional LSTM
over the (frozen) model's input embeddings, and from that condition h predicts, for each edited
matrix W, gates and a step size that shape W's gradient into the update:

    dW = -lr_l * sigmoid(eta) * ((sigmoid(alpha) gamma^T) * grad_W + sigmoid(beta) delta^T)

(alpha, beta over W's rows, gamma, delta over its columns, eta a scalar; all linear in h). It is
trained with the paper's constrained objective: the edit loss on x and its equivalents, subject to
KL(f(x') || f_edited(x')) <= margin on other inputs x', as a Lagrangian whose multiplier is
learned by gradient ascent (it grows while the constraint is violated).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.types import Example
from editors.configs.ke_style import KEConfig  # noqa: F401  (its config, torch-free)
from editors.hypernet import HypernetEditor


class KEHypernet(nn.Module):
    def __init__(self, embed_dim: int, hidden: int, shapes: list[tuple[int, int]]):
        super().__init__()
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.heads = nn.ModuleList(nn.Linear(2 * hidden, 2 * out_dim + 2 * in_dim + 1) for out_dim, in_dim in shapes)
        self.shapes = shapes
        for head, (out_dim, in_dim) in zip(self.heads, shapes):  # start as gradient descent:
            nn.init.normal_(head.weight, std=1e-3)  # alpha, beta, eta ~ 0; gamma ~ 1; delta ~ 0
            nn.init.zeros_(head.bias)
            head.bias.data[2 * out_dim : 2 * out_dim + in_dim] = 1.0
        self.raw_multiplier = nn.Parameter(torch.zeros(()))  # Lagrange multiplier, softplus > 0

    def condition(self, embeddings: Tensor) -> Tensor:
        return self.lstm(embeddings)[0].mean(1).squeeze(0)

    def update(self, h: Tensor, site: int, grad: Tensor) -> Tensor:
        out_dim, in_dim = self.shapes[site]
        alpha, beta, gamma, delta, eta = self.heads[site](h).split([out_dim, out_dim, in_dim, in_dim, 1])
        scale = torch.sigmoid(alpha)[:, None] * gamma[None, :]
        shift = torch.sigmoid(beta)[:, None] * delta[None, :]
        return torch.sigmoid(eta) * (scale * grad + shift)


class KEEditor(HypernetEditor):
    config_class = KEConfig

    def __init__(self, config: KEConfig, adapter):
        super().__init__(config, adapter)
        embed_dim = adapter.model.get_input_embeddings().weight.shape[1]
        shapes = [tuple(m.weight.shape) for _, m in self.sites]
        self.hypernet = KEHypernet(embed_dim, config.lstm_hidden, shapes).to(adapter.device)
        self.hypernet.eval()  # training mode only inside the training phase's fit

    def _edit_embeddings(self, example: Example, target: Any) -> Tensor:
        ids = self.adapter.tokenizer(f"{example.prompt} {target}", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return self.adapter.model.get_input_embeddings()(ids.to(self.adapter.device)).float()

    def updates(self, example: Example, target: Any, grads: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        h = self.hypernet.condition(self._edit_embeddings(example, target))
        out = []
        for i, (u, delta) in enumerate(grads):
            grad = delta.T @ u  # dL/dW of y = W u + b
            out.append(-self.log_lr[i].exp() * self.hypernet.update(h, i, grad))
        return out

    def meta_loss(self, edit_loss: Tensor, locality_kl: Tensor) -> Tensor:
        # min over the hypernetwork, max over the multiplier: the multiplier's gradient is
        # -(KL - m), so a descent step raises it while the constraint is violated.
        multiplier = F.softplus(self.hypernet.raw_multiplier)
        violation = locality_kl - self.config.margin
        return edit_loss + multiplier.detach() * violation - multiplier * violation.detach()
