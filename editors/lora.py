"""LoRA fine-tuning (EasyEdit's `LoRA`), a row of the WISE and AlphaEdit tables: low-rank adapters
on chosen linear layers of every (or some) block, trained on each edit in turn; one set of adapters
for the whole stream, as EasyEdit's sequential editing keeps the peft model between requests.

Read in the published code: EasyEdit at 14cea82 (`lm` easyeditor/models/lora/lora_main.py;
hparams/LoRA/llama3-8b.yaml) and the peft it calls (`pa` peft/tuners/adalora/layer.py, `pm`
adalora/model.py, peft 0.21.2). Per edit: a new Adam over the adapters (lm:97-101), `num_steps`
steps of the model's loss on prompt + " " + answer (the answer's tokens, lm:144-156), no early
stop (lm:172-179). The LLaMA presets use AdaLoRA: dW x = B ((A x) * E) * alpha / (r + 1e-5), E
zero-initialised, A and B N(0, 0.02) (pa:71-96, 195), r = init_r = 12 (AdaLoRA ignores the preset's
`rank: 8`, which it receives as `r`: `pm` model.py:128; peft's config.py:98 warns of it), and the
loss gains orth_reg_weight times the mean over every A and B of |A A^T - I|_F and |B^T B - I|_F
(pm:229-256). EasyEdit never calls peft's rank allocation (`update_and_allocate`), so ranks stay
r. `lora`: dW x = B A x alpha / r, A Kaiming-uniform, B zero (peft's LoRA init). Adapter
dropout acts in train mode only, and EasyEdit's model stays in eval mode (from_pretrained's), so
it never acts; seqedit has none.
(peft 0.21 refuses EasyEdit's AdaLoraConfig without `total_step`: the preset runs on the older peft
EasyEdit pins.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmark.models.base import linear_shape
from benchmark.types import Example
from editors.base import EditResult, HookedEditor, optimise
from editors.configs.lora import LoraConfig  # noqa: F401  (its config, torch-free)


class LoraEditor(HookedEditor):
    config_class = LoraConfig

    def __init__(self, config: LoraConfig, adapter):
        super().__init__(config, adapter)
        blocks = config.layers or list(range(len(adapter.layer_modules())))
        self.first = min(adapter.ffn_site(b).layer_index for b in blocks)
        self.targets: list[nn.Module] = []
        for block in blocks:
            linears = adapter.block_linears(block)
            for role in config.targets:
                if role not in linears:
                    raise ValueError(f"editor.targets: {adapter.config.name} has no {role!r} projection; its blocks "
                                     f"have {', '.join(linears)}")
                self.targets.append(linears[role])
        generator = torch.Generator().manual_seed(config.seed)
        self.A, self.B, self.E = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for module in self.targets:
            a, b, e = self._initial_values(*linear_shape(module), generator)
            self.A.append(nn.Parameter(a.to(adapter.device)))
            self.B.append(nn.Parameter(b.to(adapter.device)))
            self.E.append(nn.Parameter(e.to(adapter.device)))
        self.scale = config.alpha / (config.rank + 1e-5) if config.form == "adalora" else config.alpha / config.rank
        self._handles: list = []
        self._enable()

    def _initial_values(self, d_in: int, d_out: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        r = self.config.rank
        if self.config.form == "adalora":  # pa:94-96
            return (torch.randn(r, d_in, generator=generator) * 0.02, torch.randn(d_out, r, generator=generator) * 0.02,
                    torch.zeros(r, 1))
        bound = 1 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on [r, d_in], as nn.Linear and peft's LoRA
        a = torch.rand(r, d_in, generator=generator) * 2 * bound - bound
        return a, torch.zeros(d_out, r), torch.ones(r, 1)

    # -- the adapters in the forward ----------------------------------------------------------------
    def _hook(self, i: int):
        def add(_m, args, output):
            x = args[0]
            return output + (x @ (self.A[i] * self.E[i]).T @ self.B[i].T * self.scale).to(output.dtype)
        return add

    def _install(self) -> list:
        return [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.targets)]

    def edited_from(self) -> int | None:
        return self.first

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        out = {}
        for i in range(len(self.targets)):
            out.update({f"A.{i}": self.A[i], f"B.{i}": self.B[i]})
            if self.config.form == "adalora":
                out[f"E.{i}"] = self.E[i]
        return out

    def params_added(self) -> int:
        """The adapters' size once an edit has trained them (before, they add nothing: E = 0 or B = 0)."""
        params = self.trainable_parameters()
        if all(torch.equal(p, self._initial[n]) for n, p in params.items()):
            return 0
        return sum(p.numel() for p in params.values())

    # -- editing ------------------------------------------------------------------------------------
    def _orthogonality(self) -> Tensor:
        """pm:239-253: the mean over every A and B of |A A^T - I|_F and |B^T B - I|_F."""
        eye = torch.eye(self.config.rank, device=self.adapter.device)
        terms = [torch.linalg.matrix_norm(a @ a.T - eye) for a in self.A]
        terms += [torch.linalg.matrix_norm(b.T @ b - eye) for b in self.B]
        return torch.stack(terms).mean()

    def edit(self, example: Example) -> EditResult:
        cfg, adapter = self.config, self.adapter
        params = list(self.trainable_parameters().values())
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        batch = adapter.encode([example.prompt], [example.target])
        _, forward = adapter.suffix(batch, self.first)  # nothing before the first adapted block changes
        penalty = (lambda: cfg.orth_reg_weight * self._orthogonality()) \
            if cfg.form == "adalora" and cfg.orth_reg_weight else None
        return EditResult(steps=optimise(adapter, batch, forward, optimizer, cfg.max_steps, cfg.stop_when_correct,
                                         extra_loss=penalty))
