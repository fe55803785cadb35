"""T-Patcher's training step with the patch's gradient written out (`step=closed`).

The patch of one edit is n neurons: keys K [d, n], biases b [n], values V = V' * s [n, d]. On the
rows Q [R, d] the patched FFN sees, it adds act(Q K + b) V. Its loss (editors/tpatcher.py) is

    L = l_e(tail(ffn_out + act(Q K + b) V)) + a * l_a(A) + m * (l_m1 + l_m2),   A_j = q_j . k_j + b_j

and every term but l_e is a function of a few small tensors whose derivative is one line each:

* l_e: only the model's tail holds weights, so autograd runs on it alone, asked for the gradient
  G = dl_e/d(delta) [R, d] of the rows the patch adds (the model's weights are frozen, so it
  stops there); then dV = act(Z)^T G, dZ = (G V^T) * act'(Z), dK = Q^T dZ, db = sum_rows dZ.
* l_a = exp(-A) for one patch; S(-A; k_a) = mean(topk(exp(-A), k_a)) for several: dA = -exp(-A) / k_a
  at its top entries (the ones autograd's topk would pass the gradient to).
* l_m1 = mean(exp(e1 - beta)) over the top-k memory entries e = M[row] . k_col + b_col: each entry
  sends c = exp(e - beta) / k to k_col (c M[row]) and b_col (c).
* l_m2 = mean(exp(e2 - A_col + shift)): the same, and -c to A_col.
* dA_j reaches k_j as dA_j q_j and b_j as dA_j.

The top-k entries are found exactly as the autograd step finds them (one scan without gradient,
`QueryMemory.top_entries`), so both steps read the same entries and differ only in float rounding
(tests/test_tpatcher.py compares their patches and step counts across families and layers). The
gradients are handed to the same fused Adam. Served: mode=fast with memory_loss l_m1+l_m2, l_m1 or
none; the KL ablation and mode=naive (the reference) keep the autograd step.

It is opt-in (`editor.step=closed`): on CPU it is no faster than autograd over the whole step
(`python -m benchmark.perf tpatcher`, docs/performance.md): of a step's ~410 aten operators on the
tests' tiny models (counted with torch.profiler, either step), ~180 go with the memory losses (the
scan, the top-k, the entries) and ~230 remain without them (the tail's forward and backward, the
stop rule, Adam); writing the patch's backward out removes none of them. It stays as an
independent check of the loss's gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from editors.patch_memory import QueryMemory

_SQRT_HALF, _INV_SQRT_2PI = math.sqrt(0.5), 1.0 / math.sqrt(2.0 * math.pi)


def act_derivative(name: str, z: Tensor) -> Tensor:
    """d act(z)/dz as torch's own backward computes it (ReLU: 0 at z <= 0; GELU: the erf form)."""
    if name == "relu":
        return (z > 0).to(z.dtype)
    if name == "gelu":
        return 0.5 * (1.0 + torch.erf(z * _SQRT_HALF)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    sig = torch.sigmoid(z)  # silu
    return sig * (1.0 + z * (1.0 - sig))


class ClosedStep:
    """One step's losses and gradient for the patches of an edit; `gradient` writes `.grad`."""

    def __init__(self, act: str, beta: float, shift: float, activation_weight: float, memory_weight: float,
                 topk: int, topk_activation: int, memory_loss: str):
        self.act, self.beta, self.shift = act, beta, shift
        self.a, self.m, self.topk, self.topk_activation = activation_weight, memory_weight, topk, topk_activation
        self.memory_loss = memory_loss

    @torch.no_grad()
    def forward(self, query: Tensor, own: Tensor, keys: Tensor, bias: Tensor, values: Tensor,
                act_fn, memory: QueryMemory) -> dict:
        """Everything up to the tail: the rows the patch adds, its own activations A, and the top-k
        memory entries with the rows they read."""
        z = query @ keys + bias  # [R, n]
        state = {"z": z, "act": act_fn(z), "A": (own * keys.T).sum(-1) + bias}
        state["delta"] = state["act"] @ values
        if self.memory_loss.startswith("l_m1") and len(memory):
            top1, top2 = memory.top_entries(keys, bias, [torch.zeros_like(bias), self.shift - state["A"]], self.topk)
            state["m1"] = self._entries(memory, keys, bias, top1)
            if self.memory_loss == "l_m1+l_m2":
                state["m2"] = state["m1"] if top2 is top1 else self._entries(memory, keys, bias, top2)
        return state

    @staticmethod
    def _entries(memory: QueryMemory, keys: Tensor, bias: Tensor, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(values, rows M[row] [k, d], patch index) of the entries at flat indices."""
        n = keys.shape[1]
        rows, cols = memory.gather_rows(flat // n, keys.dtype), flat % n
        picked = (rows @ keys).gather(1, cols[:, None]).squeeze(1) + bias[cols]
        return picked, rows, cols

    @torch.no_grad()
    def terms(self, edit_loss: Tensor, state: dict) -> dict[str, Tensor]:
        """The losses' values at this step, named as the autograd step's `losses` names them (with
        `memory_max`, the largest memory entry, for the stop rule)."""
        A = state["A"]
        activation = torch.exp(-A).squeeze(0) if len(A) == 1 else \
            (-A).topk(min(self.topk_activation, len(A))).values.exp().mean()
        out = {"edit": edit_loss.detach(), "activation": activation}
        if "m1" in state:
            e1 = state["m1"][0]
            out["memory_max"], out["memory1"] = e1.max(), torch.exp(e1 - self.beta).mean()
            if "m2" in state:
                e2, _, cols2 = state["m2"]
                out["memory2"] = torch.exp(e2 - A[cols2] + self.shift).mean()
        return out

    @torch.no_grad()
    def gradient(self, tail_grad: Tensor, query: Tensor, own: Tensor, patches, state: dict) -> None:
        """dL/d(keys, bias, value_dir, value_scale) from the tail's G = dl_e/d(delta) [R, d]."""
        values = patches.values()
        d_values = state["act"].T @ tail_grad  # [n, d]
        dz = (tail_grad @ values.T) * act_derivative(self.act, state["z"])  # [R, n]
        d_keys, d_bias = query.T @ dz, dz.sum(0)
        A = state["A"]
        if len(A) == 1:
            d_A = -self.a * torch.exp(-A)
        else:
            top = (-A).topk(min(self.topk_activation, len(A)))
            d_A = torch.zeros_like(A).index_put_((top.indices,), -self.a * top.values.exp() / len(top.indices))
        if "m1" in state:
            e1, rows1, cols1 = state["m1"]
            c1 = self.m * torch.exp(e1 - self.beta) / len(e1)
            self._entry_grad(c1, rows1, cols1, d_keys, d_bias)
            if "m2" in state:
                e2, rows2, cols2 = state["m2"]
                c2 = self.m * torch.exp(e2 - A[cols2] + self.shift) / len(e2)
                self._entry_grad(c2, rows2, cols2, d_keys, d_bias)
                d_A.index_add_(0, cols2, -c2)
        d_keys += own.T * d_A  # A_j = q_j . k_j + b_j
        d_bias += d_A
        for param, grad in ((patches.keys, d_keys), (patches.bias, d_bias),
                            (patches.value_dir, d_values * patches.value_scale),
                            (patches.value_scale, d_values * patches.value_dir)):
            # in the parameter's own layout (the keys are a transpose): the fused Adam walks both
            # tensors' storage in step, so a gradient laid out otherwise would update the wrong entries
            param.grad = grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)

    @staticmethod
    def _entry_grad(coef: Tensor, rows: Tensor, cols: Tensor, d_keys: Tensor, d_bias: Tensor) -> None:
        """Entries e = M[row] . k_col + b_col with dL/de = coef: into k_col and b_col."""
        if d_keys.shape[1] == 1:
            d_keys[:, 0] += rows.T @ coef
        else:  # each entry's row into its own patch's column: a scatter, not a product with a one-hot
            d_keys.T.index_add_(0, cols, rows * coef[:, None])
        d_bias.index_add_(0, cols, coef)
