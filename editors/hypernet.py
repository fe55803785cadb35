"""What KE and MEND share: hypernetworks that turn one edit's gradient into a weight update of
chosen linear layers, learned before the run on D'train.

* Sites: the FFN input and output projections of the last `blocks` transformer blocks (MEND's
  default: the last 3 MLPs), found through the model adapter, so no layer name is hard-coded.
* The gradient of the edit loss at a linear layer y = W u + b is sum_t delta_t u_t^T (delta the
  gradient at its output). It is captured as (u, delta) at every real position, once, without a
  graph: both papers feed the hypernetwork the gradient as data.
* An update dW is applied in training as a forward hook (y + dW u), differentiable in dW, so the
  meta-loss trains the hypernetwork without copying the model; at edit time it is added to W
  in place, on the current (already edited) model.
* Training edits teach a *new* answer (the data's alternative, else another object of the same
  relation; the flipped label for classification), as both papers do: the initial model already
  knows D'train, so its gold answers would teach nothing. The edit loss is measured on the edit
  and its equivalents (generalisation), the locality term on other D'train inputs (KL to the
  unedited model).
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from benchmark.models.base import installed
from benchmark.types import EditorData, Example
from editors.base import Editor, EditResult, answer_pool, scored_forward
from editors.configs.hypernet import HypernetConfig  # noqa: F401  (its config, torch-free)


class HypernetEditor(Editor):
    """Subclasses build `self.hypernet` and implement `updates(example, target, grads)`: the weight
    update of each site, differentiable in the hypernetwork's parameters."""

    traits = Editor.traits.but(training=True, one_shot=True)

    def __init__(self, config: HypernetConfig, adapter):
        super().__init__(config, adapter)
        n = len(adapter.layer_modules())  # a model with fewer blocks is edited in all of them
        names = {m: name for name, m in adapter.model.named_modules()}
        self.sites: list[tuple[str, nn.Linear]] = []
        for layer in range(max(0, n - config.blocks), n):
            site = adapter.ffn_site(layer)
            for module in (site.in_proj, site.out_proj):
                if not isinstance(module, nn.Linear):
                    kind = type(module).__name__
                    raise ValueError(f"{config.name} edits nn.Linear layers; {names[module]} is {kind}")
                self.sites.append((names[module], module))
        self.log_lr = nn.Parameter(torch.full((len(self.sites),), math.log(config.edit_lr), device=adapter.device))

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {f"{name}.weight": module.weight for name, module in self.sites}

    # -- gradients in, updates out ----------------------------------------------------------------
    def gradients(self, prompts: list[str], targets: list[Any]) -> list[tuple[Tensor, Tensor]]:
        """(u, delta) per site, at the positions the loss reaches: the gradient is delta^T u."""
        batch = self.adapter.encode(prompts, targets)
        seen: list[tuple[Tensor, Tensor]] = []

        def keep(_m, args, output):
            # dL/d(output) as the gradient of a zero added to it: the graph through the output
            # stays whole, so earlier sites still see the paths through later ones
            probe = torch.zeros_like(output, requires_grad=True)
            seen.append((args[0].detach(), probe))
            return output + probe

        with installed([m.register_forward_hook(keep) for _, m in self.sites]), torch.enable_grad():
            loss = self.adapter.loss(batch, self.adapter.scored_logits(batch))
            deltas = torch.autograd.grad(loss, [out for _, out in seen])
        out = []
        for (u, _), d in zip(seen, deltas):
            u, d = u.reshape(-1, u.shape[-1]).float(), d.reshape(-1, d.shape[-1]).float()
            # the gradient's support: padding and positions that cannot reach the loss give
            # delta = 0, and would only feed MEND's network rows of noise
            keep = d.abs().amax(-1) > 0
            out.append((u[keep], d[keep]))
        return out

    def updates(self, example: Example, target: Any, grads: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        raise NotImplementedError

    @contextmanager
    def applied(self, updates: list[Tensor]):
        """The model with W + dW at every site, differentiable in dW (forward hooks)."""
        with installed([m.register_forward_hook(lambda _m, args, out, dw=dw: out + F.linear(args[0], dw.to(out.dtype)))
                        for (_, m), dw in zip(self.sites, updates)]):
            yield

    # -- the sequential run ----------------------------------------------------------------------
    def edit(self, example: Example) -> EditResult:
        with torch.no_grad():
            grads = self.gradients([example.prompt], [example.target])
            updates = self.updates(example, example.target, grads)
            for (_, module), dw in zip(self.sites, updates):
                module.weight.add_(dw.to(module.weight.dtype))
        return EditResult(steps=0, info={"update_norm": float(sum(dw.norm() ** 2 for dw in updates) ** 0.5)})

    # -- the training phase ----------------------------------------------------------------------
    def training_module(self, data: EditorData) -> HypernetTraining:
        for p in self.model.parameters():
            p.requires_grad_(False)
        return HypernetTraining(self, data)

    def hypernet_parameters(self) -> list[nn.Parameter]:
        return [*self.hypernet.parameters(), self.log_lr]

    def trained_state(self) -> dict[str, Any]:
        return {"hypernet": self.hypernet.state_dict(), "log_lr": self.log_lr.detach().clone()}

    def load_trained(self, state: dict[str, Any]) -> None:
        self.hypernet.load_state_dict(state["hypernet"])
        self.hypernet.eval()
        with torch.no_grad():
            self.log_lr.copy_(state["log_lr"])

    def meta_loss(self, edit_loss: Tensor, locality_kl: Tensor) -> Tensor:
        raise NotImplementedError


class HypernetTraining(L.LightningModule):
    monitor = "val_edit_success"

    def __init__(self, editor: HypernetEditor, data: EditorData, mode: str = "fast"):
        super().__init__()
        self.mode = mode  # fast: the locality KL's edited forward runs only the edited blocks; naive: all
        self.editor, self.cfg = editor, editor.config
        self.train_examples = data.train[: self.cfg.train_examples]
        self.val_examples = (data.val or data.train[-32:])[:64]
        self.pool = answer_pool(data.train)
        self.site_weights = [module.weight for _, module in editor.sites]

    def on_fit_start(self) -> None:
        # Lightning leaves a submodule in the mode it finds it in, and the editor keeps its
        # network in eval mode between fits: train mode here (the published code trains its
        # networks in it; cuDNN's LSTM backward refuses eval mode); validation and the edits
        # after the fit run it in eval mode
        self.editor.hypernet.train()
        calibrate = getattr(self.editor, "calibrate", None)
        if calibrate is not None:
            sample = self.train_examples[:64]
            calibrate(sample, [self._target(e) for e in sample])

    def on_fit_end(self) -> None:
        self.editor.hypernet.eval()

    def _target(self, example: Example) -> Any:
        return self.editor.adapter.task.new_answer(example, self.pool)

    def training_step(self, examples: list[Example], _idx):
        editor, adapter = self.editor, self.editor.adapter
        adapter.model.eval()  # Lightning sets train mode; the edited model runs without dropout
        losses = []
        for e in examples:
            target = self._target(e)
            updates = editor.updates(e, target, editor.gradients([e.prompt], [target]))
            prompts = [e.prompt, *e.equivalents[: self.cfg.equivalents]]
            edit_batch = adapter.encode(prompts, [target] * len(prompts))
            others = random.sample(self.train_examples, min(self.cfg.locality, len(self.train_examples)))
            loc_batch = adapter.encode([o.prompt for o in others], [o.target for o in others])
            # the unedited logits from a forward that records the edited blocks' input; the edited
            # ones then run only those blocks (exact: the updates act inside them)
            reference, edited = scored_forward(adapter, loc_batch, self.site_weights, self.mode, reference=True)
            with editor.applied(updates):
                edit_loss = adapter.loss(edit_batch, adapter.scored_logits(edit_batch))
                kl = adapter.task.kl(reference, edited())
            losses.append(editor.meta_loss(edit_loss, kl))
            self.log_dict({"edit_loss": edit_loss.detach(), "locality_kl": kl.detach()}, batch_size=1)
        loss = torch.stack(losses).mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(examples))
        return loss

    def validation_step(self, examples: list[Example], _idx):
        editor, adapter = self.editor, self.editor.adapter
        adapter.model.eval()
        hits = []
        for e in examples:
            target = self._target(e)
            with torch.no_grad():
                updates = editor.updates(e, target, editor.gradients([e.prompt], [target]))
                batch = adapter.encode([e.prompt], [target])
                with editor.applied(updates):
                    hits.append(float(adapter.token_correct(batch, adapter.scored_logits(batch)).all()))
        self.log(self.monitor, sum(hits) / len(hits), prog_bar=True, batch_size=len(hits))

    def train_dataloader(self):
        return DataLoader(self.train_examples, batch_size=self.cfg.train_batch_size, shuffle=True, collate_fn=list,
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader(self.val_examples, batch_size=64, collate_fn=list)

    def configure_optimizers(self):
        return torch.optim.Adam(self.editor.hypernet_parameters(), lr=self.cfg.train_lr)
