"""RLEdit (Li et al. 2025, "Reinforced Lifelong Editing for Language Models"): UltraEdit's
closed-form update with a trained hypernetwork between the normalised keys and gradients and the
values, trained over trajectories of sequential edits with the model kept edited along them.

Read in the published code: the authors' RLEdit as kept in leo-liuzy/RLEdit (editor/rledit_origin.py
and editor/base_original.py at 820d69f, nets.py, config/editor/rledit.yaml and config/model/*.yaml at
1822b1c) and its copy in XiaojieGu/UltraEdit (`rl` editor/rledit.py, `eb` editor/base.py, `nt`
nets.py; the same functions, cited by line below).

* The network (nt:36-108): [K, G] standardised by running statistics per weight shape, then
  residual blocks y + scale_m * relu(y A B + b) + shift_m (A random, B zero: the identity at
  initialisation), split into pseudo keys K~ and gradients G~.
* The update (rl:183-218): V = -lr_m (K . K~) G~ per row, dW^T = (K^T K + e^lambda_m I)^-1 K^T V
  from the raw keys; lr_m (from 1e-6) and lambda_m (from 0) are learned per layer. An untrained
  RLEdit is UltraEdit with K . K~ in place of |K^|^2.
* Training (rl:99-181): one trajectory of `trajectory` steps over D'train; at each step the
  keys and gradients of the step's edits are read on the model as edited so far, the update is
  predicted and applied, and the loss is sum_j gamma^j (L_gen of step t - j + c_loc KL_loc of step
  t - j) over the last `back_depth` steps (this one included) + reg |dW|^2, where the KL compares
  the model before and after this step's update. Its gradient reaches only this step's update
  (the earlier ones are part of the model). The gradients of the steps add up, clipped after
  each (rl:259-262), and the network takes one Adam step at the end of the trajectory
  (rl:176-177); each trajectory starts from the unedited model (the fork's run: reset_model).
  The published code carries the gradient from the weights to the network by hand (rl:221-257);
  here autograd does, through the same solve (the same gradient: tests).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from benchmark.models.base import installed, linear_shape
from benchmark.types import EditorData, Example
from editors.base import answer_pool, scored_forward
from editors.configs.rledit import RLEditConfig  # noqa: F401  (its config, torch-free)
from editors.ultraedit import UltraEditEditor, add_shift

# the presets' blocks (config/model/llama-3-instruct.yaml, gpt-j.yaml): LLaMA-3-8B's gates and ups of
# 22-30 of 32 blocks; GPT-J's fc_out of 22-27 of 28
GATED_PRESET = {"in_layers": (range(22, 31), 32), "up_layers": (range(22, 31), 32)}
PLAIN_PRESET = {"out_layers": (range(22, 28), 28)}


class _Block(nn.Module):
    """y + scale_m * relu(y A B + b) + shift_m (nt RLEditBlock; its clamp(0) is the relu)."""

    def __init__(self, size: int, rank: int, layers: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(size, rank))
        self.B = nn.Parameter(torch.zeros(rank, size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.scale = nn.Parameter(torch.ones(layers, size))
        self.shift = nn.Parameter(torch.zeros(layers, size))

    def forward(self, y: Tensor, layer: int) -> Tensor:
        x = (y @ self.A @ self.B + self.bias).clamp(min=0)
        return self.scale[layer] * x + self.shift[layer] + y


class RLEditNet(nn.Module):
    """The network of one weight shape, shared by the `layers` rewritten layers of that shape."""

    def __init__(self, d_in: int, d_out: int, rank: int, blocks: int, layers: int, lr: float):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.blocks = nn.ModuleList(_Block(d_in + d_out, rank, layers) for _ in range(blocks))
        self.lr = nn.Parameter(torch.full((layers,), lr))
        self.log_lambda = nn.Parameter(torch.zeros(layers))

    def forward(self, z: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        for block in self.blocks:
            z = block(z, layer)
        return z[:, : self.d_in], z[:, self.d_in :]


class RLEditEditor(UltraEditEditor):
    config_class = RLEditConfig
    traits = UltraEditEditor.traits.but(training=True)
    presets = (GATED_PRESET, PLAIN_PRESET)

    def __init__(self, config: RLEditConfig, adapter):
        super().__init__(config, adapter)
        shapes = [linear_shape(m) for m in self.layers]
        # each layer's row in the network of its shape (the published name2idx)
        self.slot = [shapes[:i].count(shape) for i, shape in enumerate(shapes)]
        self.hypernet = nn.ModuleDict({
            f"{d_in}x{d_out}": RLEditNet(d_in, d_out, config.rank, config.hidden_blocks, shapes.count((d_in, d_out)),
                                         config.lr)
            for d_in, d_out in dict.fromkeys(shapes)}).to(adapter.device)
        self.trained_normalisers: dict[tuple[int, int], dict[str, Tensor]] = {}
        self._new_normalisers()

    def _new_normalisers(self) -> None:
        """Each fold starts from the statistics the training left (the published normaliser lives in
        the network and runs on through the edits)."""
        super()._new_normalisers()
        for shape, state in self.trained_normalisers.items():
            self.normalisers[shape].load(state)

    def _shift(self, index: int, module: nn.Module, keys: Tensor, grads: Tensor) -> Tensor:
        """dW^T [in, out] of layer `index` (rl:183-218), differentiable in the network."""
        d_in, d_out = linear_shape(module)
        net, slot = self.hypernet[f"{d_in}x{d_out}"], self.slot[index]
        pseudo_keys, pseudo_grads = net(self.normalisers[(d_in, d_out)](torch.cat([keys, grads], -1)), slot)
        values = -net.lr[slot] * (keys * pseudo_keys).sum(-1, keepdim=True) * pseudo_grads
        gram = keys.T @ keys + net.log_lambda[slot].exp() * torch.eye(d_in, device=keys.device)
        return torch.linalg.solve(gram, keys.T @ values)

    def shifts(self, examples: list[Example], update: bool = True) -> list[Tensor]:
        """Every layer's dW^T for `examples` as one step (their keys and gradients read on the model
        as it is now), the normalisers first updated with them (`update`, as the published cache)."""
        pairs = self._keys_and_gradients(examples)
        if update:
            for module, (keys, grads) in zip(self.layers, pairs):
                self.normalisers[linear_shape(module)].update(torch.cat([keys, grads], -1))
        return [self._shift(i, module, keys, grads)
                for i, (module, (keys, grads)) in enumerate(zip(self.layers, pairs))]

    @contextmanager
    def applied(self, shifts: list[Tensor]):
        """The model with W + dW at every rewritten layer, differentiable in dW (forward hooks)."""
        def hook(shift):
            return lambda _m, args, out: out + (args[0].to(shift.dtype) @ shift).to(out.dtype)

        with installed([m.register_forward_hook(hook(s)) for m, s in zip(self.layers, shifts)]):
            yield

    def add(self, shifts: list[Tensor]) -> None:
        for module, shift in zip(self.layers, shifts):
            add_shift(module, shift)

    # -- the training phase ----------------------------------------------------------------------
    def training_module(self, data: EditorData) -> RLEditTraining:
        for p in self.model.parameters():
            p.requires_grad_(False)
        return RLEditTraining(self, data)

    def trained_state(self) -> dict[str, Any]:
        return {"hypernet": self.hypernet.state_dict(),
                "normalisers": [[list(shape), norm.state()] for shape, norm in self.normalisers.items()]}

    def load_trained(self, state: dict[str, Any]) -> None:
        self.hypernet.load_state_dict(state["hypernet"])
        self.trained_normalisers = {tuple(shape): norm for shape, norm in state["normalisers"]}
        self._new_normalisers()


class RLEditTraining(L.LightningModule):
    """One trajectory an epoch (rl:99-181), the network stepped once at its end; validated on
    D_val by one-shot edits of the unedited model (the normalisers left as they are)."""

    monitor = "val_edit_success"

    def __init__(self, editor: RLEditEditor, data: EditorData, mode: str = "fast"):
        super().__init__()
        self.mode = mode  # fast: the edited forward runs only the blocks from the first rewritten one; naive: all
        self.automatic_optimization = False  # gradients add up over the trajectory: one step at its end
        self.editor, self.cfg = editor, editor.config
        self.train_examples = data.train[: self.cfg.train_examples]
        self.val_examples = (data.val or data.train[-32:])[:64]
        self.pool = answer_pool(data.train)

    def _step(self, example: Example) -> dict[str, Any]:
        """A training edit: a new answer (as KE and MEND train), the prompts its generalisation loss
        reads (its equivalents, else itself) and the input its locality term keeps (its own
        locality prompt where the data has one, as zsRE's loc; else another D'train input)."""
        target = self.editor.adapter.task.new_answer(example, self.pool)
        equivalents = example.equivalents[: self.cfg.equivalents] or [example.prompt]
        if example.locality:
            unrelated = example.locality[0]
        else:
            other = random.choice([e for e in self.train_examples if e is not example] or [example])
            unrelated = (other.prompt, other.target)
        return {"edit": replace(example, target=target), "equivalents": equivalents, "unrelated": unrelated}

    def training_step(self, _batch, _idx):
        editor, cfg, adapter = self.editor, self.cfg, self.editor.adapter
        adapter.model.eval()  # Lightning sets train mode; the edited model runs without dropout
        size = min(cfg.trajectory * cfg.train_batch_size, len(self.train_examples))
        drawn = random.sample(self.train_examples, size)
        initial = [m.weight.detach().clone() for m in editor.layers]
        history: list[list[dict[str, Any]]] = []
        losses = []
        shown = self._trainer is not None and self.trainer.progress_bar_callback is not None
        try:
            for start in tqdm(range(0, size, cfg.train_batch_size), desc="trajectory", leave=False, disable=not shown):
                history.append([self._step(e) for e in drawn[start : start + cfg.train_batch_size]])
                losses.append(self._trajectory_step(history[-cfg.back_depth :][::-1]))
        finally:
            with torch.no_grad():
                for module, weight in zip(editor.layers, initial):
                    module.weight.copy_(weight)
        optimizer = self.optimizers()
        optimizer.step()
        optimizer.zero_grad()
        self.log("train_loss", sum(losses) / len(losses), prog_bar=True, batch_size=1)

    def _trajectory_step(self, recent: list[list[dict[str, Any]]]) -> float:
        """One step: this step's update predicted (with gradient), its losses over `recent` (this
        step first) backward into the network, then the update kept in the model (rl:111-167).
        The recent steps' generalisation and locality inputs run as one batch, whose unedited
        forward gives the locality reference and records the input of the first rewritten block;
        the edited forward reruns only the blocks from there (`scored_forward`, exact). Each
        step's loss is the mean over its own rows, as when the published code runs them one by one."""
        editor, cfg, adapter = self.editor, self.cfg, self.editor.adapter
        steps = len(recent)
        gen = [[(p, s["edit"].target) for s in step for p in s["equivalents"]] for step in recent]
        batch, group = _encoded(adapter, gen + [[s["unrelated"] for s in step] for step in recent])
        weights = [m.weight for m in editor.layers]
        reference, edited = scored_forward(adapter, batch, weights, self.mode, reference=True)
        with torch.enable_grad():
            predicted = editor.shifts([s["edit"] for s in recent[0]])
            # the losses' gradient for each update, then carried into the network in one backward
            shifts = [s.detach().requires_grad_(True) for s in predicted]
            loss = cfg.reg_weight * sum(s.pow(2).sum() for s in shifts)
            with editor.applied(shifts):
                logits = edited()
            for j in range(steps):
                rows, loc_rows = group == j, group == steps + j
                gen_loss = adapter.task.loss(logits[rows], batch.targets[rows])
                kl = adapter.task.kl(reference[loc_rows], logits[loc_rows])
                loss = loss + cfg.time_decay**j * (gen_loss + cfg.locality_weight * kl)
            self.manual_backward(loss)
            torch.autograd.backward(predicted, [s.grad for s in shifts])
        nn.utils.clip_grad_norm_(list(editor.hypernet.parameters()), cfg.max_grad_norm)
        editor.add([s.detach() for s in predicted])
        return float(loss.detach())

    def validation_step(self, examples: list[Example], _idx):
        editor, adapter = self.editor, self.editor.adapter
        adapter.model.eval()
        hits = []
        for e in examples:
            edit = replace(e, target=adapter.task.new_answer(e, self.pool))
            with torch.no_grad():
                shifts = editor.shifts([edit], update=False)
                batch = adapter.encode([edit.prompt], [edit.target])
                with editor.applied(shifts):
                    hits.append(float(adapter.token_correct(batch, adapter.scored_logits(batch)).all()))
        self.log(self.monitor, sum(hits) / len(hits), prog_bar=True, batch_size=len(hits))

    def train_dataloader(self):
        return DataLoader([0], batch_size=1, collate_fn=list)  # one item: the epoch's trajectory

    def val_dataloader(self):
        return DataLoader(self.val_examples, batch_size=64, collate_fn=list)

    def configure_optimizers(self):
        return torch.optim.Adam(self.editor.hypernet.parameters(), lr=self.cfg.train_lr)


def _encoded(adapter, groups: list[list[tuple[str, Any]]]):
    """One batch of every group's (prompt, target) pairs, and the group of each scored row."""
    pairs = [pair for group in groups for pair in group]
    batch = adapter.encode([p for p, _ in pairs], [t for _, t in pairs])
    group_of = torch.tensor([j for j, group in enumerate(groups) for _ in group], device=batch.owner.device)
    return batch, group_of[batch.owner]
