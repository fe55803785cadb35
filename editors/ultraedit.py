"""UltraEdit (Gu et al. 2025, "UltraEdit: Training-, Subject-, and Memory-Free Lifelong Editing in
Large Language Models"): each edit is one closed-form update of a set of linear layers, computed
from the layers' inputs (keys) and the loss gradient at their outputs, both standardised by
statistics that run over every edit of the stream (lifelong normalisation).

Read in the published code: the authors' XiaojieGu/UltraEdit at 0beb222 (`ue` editor/ultraedit.py,
`eb` editor/base.py, `nt` nets.py, `ut` util.py, `dz` data/zsre.py; config/editor/ultraedit.yaml,
config/model/llama-3-instruct.yaml) and EasyEdit's port at 14cea82 (easyeditor/models/ultraedit/
ULTRAEDIT.py, hparams/UltraEdit/*.yaml). One turn of edits (ue:60-131, eb:156-169):
1. For each chunk of requests, one forward on prompt + answer (teacher-forced, dz:24-49) and the
   mean cross-entropy over the answer's tokens (ut:44-56) backward; at each edited layer the keys K
   (its input) and the gradients G of the loss at its output, at the answer's positions
   (`token: ans`, ut TracerDict; EasyEdit's presets `token: mask`: every real position).
2. The layer's normaliser (one per weight shape, shared by the layers of that shape) takes
   [K, G] into its running mean and std (nt RunningMeanStd.update), then [K^, G^] = ([K, G] -
   mean) / (std + eps) (ue:84-87).
3. V = -lr |K^_i|^2 G^_i per row (ue:89-90); the update solves the ridge regression from the raw
   keys: dW^T = (K^T K + I)^-1 K^T V (ue:91-94), added to the weight (eb:59-71).
The authors edit turns of 100 requests in chunks of 10; seqedit's stream edits one request at a
time (a turn of one), and `loop.mode=batch` edits all at once in chunks of `chunk_size`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.models.base import installed, linear_shape
from benchmark.types import EditorData, Example
from editors.base import Editor, EditResult
from editors.configs.ultraedit import UltraEditConfig  # noqa: F401  (its config, torch-free)

ROLES = (("in_layers", "in_proj"), ("up_layers", "up_proj"), ("out_layers", "out_proj"))


# the presets' blocks: LLaMA-3-8B-Instruct (32 blocks, gated) and GPT-J (28 blocks, not gated)
GATED_PRESET = {"in_layers": (range(11, 16), 32), "up_layers": (range(18, 25), 32)}
PLAIN_PRESET = {"out_layers": (range(18, 27), 28)}


def preset_layers(config: UltraEditConfig, blocks: int, gated: bool,
                  presets: tuple[dict, dict] = (GATED_PRESET, PLAIN_PRESET)) -> dict[str, list[int]]:
    """The blocks of each role: as given, or unset, the preset's blocks at the same relative depth
    (the first of `presets` for a gated FFN, the second otherwise), each block once."""
    preset = presets[0] if gated else presets[1]
    out = {}
    for key, _ in ROLES:
        given = getattr(config, key)
        if given is None:
            layers, depth = preset.get(key, ((), 1))
            given = list(dict.fromkeys(layer * blocks // depth for layer in layers))
        out[key] = list(given)
    return out


@torch.no_grad()
def add_shift(module: nn.Module, shift: Tensor) -> None:
    """W += dW for a shift dW^T [in, out] (nn.Linear keeps W as [out, in], GPT-2's Conv1D as [in, out])."""
    module.weight += (shift.T if isinstance(module, nn.Linear) else shift).to(module.weight.dtype)


class LifelongNormaliser:
    """A running mean and std over every row it was given (nt RunningMeanStd, float32). Where it is
    given one row at once, that row adds no spread: the published update takes its unbiased
    variance, which is NaN for one row, and would turn the weights into NaN."""

    def __init__(self, size: int, device):
        self.n = torch.zeros(1, device=device)
        self.mean = torch.zeros(size, device=device)
        self.var = torch.zeros(size, device=device)
        self.std = torch.zeros(size, device=device)

    def update(self, x: Tensor) -> None:
        m = x.shape[0]
        n = self.n + m
        delta = x.mean(0) - self.mean
        self.mean = self.mean + m * delta / n
        spread = m * x.var(0) if m > 1 else torch.zeros_like(self.var)
        self.var = self.var + spread + self.n * m * delta.pow(2) / n
        self.std = (self.var / (n - 1 + torch.finfo(x.dtype).eps)).sqrt()
        self.n = n

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / (self.std + torch.finfo(x.dtype).eps)

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k).clone() for k in ("n", "mean", "var", "std")}

    def load(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.clone())


class UltraEditEditor(Editor):
    config_class = UltraEditConfig
    traits = Editor.traits.but(one_shot=True, batches=True)
    presets = (GATED_PRESET, PLAIN_PRESET)  # the blocks edited where the config leaves them unset

    def __init__(self, config: UltraEditConfig, adapter):
        super().__init__(config, adapter)
        self.layers: list[nn.Module] = []
        chosen = preset_layers(config, len(adapter.layer_modules()), adapter.ffn_site(0).gated, self.presets)
        for key, role in ROLES:  # the order of the published edit_modules: gates, then ups
            for layer in chosen[key]:
                module = getattr(adapter.ffn_site(layer), role)
                if module is None:
                    raise ValueError(f"editor.{key}={getattr(config, key)}: {adapter.config.name}'s FFN is not gated, "
                                     "it has no up projection (use editor.in_layers or editor.out_layers)")
                self.layers.append(module)
        self.normalisers: dict[tuple[int, int], LifelongNormaliser] = {}

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(m.weight)]: m.weight for m in self.layers}

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        for p in self.trainable_parameters().values():  # written in closed form, never by autograd
            p.requires_grad_(False)
        self._new_normalisers()

    def _new_normalisers(self) -> None:
        self.normalisers = {shape: LifelongNormaliser(sum(shape), self.adapter.device)
                            for shape in dict.fromkeys(linear_shape(m) for m in self.layers)}

    # -- editing --------------------------------------------------------------------------------
    def _keys_and_gradients(self, examples: list[Example]) -> list[tuple[Tensor, Tensor]]:
        """(K, G) of every edited layer from one forward and backward of the chunk (step 1): a zero
        added to each layer's output carries the loss's gradient there, whatever layers follow."""
        adapter = self.adapter
        batch = adapter.encode([e.prompt for e in examples], [e.target for e in examples])
        at = batch.score_mask if self.config.token == "ans" else batch.valid_mask
        keys: dict[int, Tensor] = {}
        zeros: dict[int, Tensor] = {}

        def keep(i: int):
            def hook(_m, args, output):
                if output.shape[:2] != at.shape:
                    raise ValueError(f"editor={self.config.name}: layer {i} runs over another sequence than the "
                                     "scored one")
                keys[i] = args[0][at].detach().float()
                zeros[i] = torch.zeros_like(output, requires_grad=True)
                return output + zeros[i]
            return hook

        with installed([m.register_forward_hook(keep(i)) for i, m in enumerate(self.layers)]), torch.enable_grad():
            loss = adapter.loss(batch, adapter.scored_logits(batch))
            grads = torch.autograd.grad(loss, [zeros[i] for i in range(len(self.layers))], allow_unused=True)
        return [(keys[i], (torch.zeros_like(zeros[i]) if g is None else g)[at].float()) for i, g in enumerate(grads)]

    def _shift(self, index: int, module: nn.Module, keys: Tensor, grads: Tensor) -> Tensor:
        """dW^T [in, out] of layer `index` from its keys and gradients of the whole turn (steps 2-3)."""
        d_in, d_out = linear_shape(module)
        z = self.normalisers[(d_in, d_out)](torch.cat([keys, grads], -1))
        keys_hat, grads_hat = z.split([d_in, d_out], -1)
        values = -self.config.lr * (keys_hat * keys_hat).sum(-1, keepdim=True) * grads_hat
        gram = keys.T @ keys + torch.eye(d_in, device=keys.device)
        return torch.linalg.solve(gram, keys.T @ values)

    def edit_batch(self, examples: list[Example]) -> EditResult:
        size = self.config.chunk_size
        turn: list[list[tuple[Tensor, Tensor]]] = [[] for _ in self.layers]
        for start in range(0, len(examples), size):
            pairs = self._keys_and_gradients(examples[start : start + size])
            for i, (module, (keys, grads)) in enumerate(zip(self.layers, pairs)):
                self.normalisers[linear_shape(module)].update(torch.cat([keys, grads], -1))
                turn[i].append((keys, grads))
        with torch.no_grad():
            for i, (module, pairs) in enumerate(zip(self.layers, turn)):
                keys, grads = torch.cat([k for k, _ in pairs]), torch.cat([g for _, g in pairs])
                add_shift(module, self._shift(i, module, keys, grads))
        return EditResult(steps=0, info={"tokens": int(sum(k.shape[0] for k, _ in turn[0]))})

    def edit(self, example: Example) -> EditResult:
        return self.edit_batch([example])

    # -- folds and resume ------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._new_normalisers()

    def edit_state(self) -> dict[str, Any]:
        return {"weights": super().edit_state(),
                "normalisers": [[list(shape), norm.state()] for shape, norm in self.normalisers.items()]}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        super().load_edit_state(state["weights"])
        for shape, norm_state in state["normalisers"]:
            self.normalisers[tuple(shape)].load(norm_state)
