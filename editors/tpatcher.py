"""Transformer-Patcher (Huang et al., ICLR 2023): one mistake, one neuron (or up to 5).

A patch is an extra key/value neuron on the last FFN: FFN_p(q) = FFN(q) + act(q.k_p + b_p) v_p.
Loss l_e + a*l_a + m*(l_m1 + l_m2) with S(v; k) = mean(topk(exp(v), k)):

* l_e: the task loss (binary cross-entropy, or token cross-entropy under teacher forcing);
* l_a: exp(-A) for one patch, S(-A; k_a) for several (App. A, Eq. 30), A = q_e.k_p + b_p;
* l_m1 = S(M k_p + b_p - beta; k): patches stay below beta on the memory M;
* l_m2 = S(M k_p + b_p - A +/- gamma; k): memory activations stay away from the patch's own.
  The extracted paper text reads "- gamma"; the published code keeps a margin, "+ gamma"
  (memory at least gamma *below* A). `l_m2_sign="margin"` (default) is the code's form; the
  prototype in shared/notes measured the same quality in fewer steps. `"paper"` is the other.

Choices where the paper is silent or ambiguous, each a config field:

* Patch activation. For GELU/ReLU FFNs it is the FFN's own (the paper): beta/gamma -3/3 for
  GELU, 0/0 for ReLU. For gated (SwiGLU) MLPs it is a free choice; the default is ReLU with
  beta -3, gamma 3: ReLU is exactly zero below threshold (SiLU leaks silu(s)*v onto every token,
  and the leaks of many patches add up), and beta = 0 left no margin in the prototype. For SiLU
  "by the same reasoning" as GELU(-3) ~ -0.004 we take beta -8 (|silu(-8)| ~ 0.003), gamma 8.
* Memory rows are the patched FFN's queries where its output can reach an answer: at the last
  FFN (the default) the *scored* positions of memory examples (the [CLS] state; the positions
  that predict answer tokens); at an earlier FFN (`layer`) every real position, since the later
  blocks' attention carries each to the answer. A patch leaves its own FFN's queries unchanged,
  so the memory is computed once and grows by the stream's examples (`memory_update`).
* S(.; k) over the memory needs gradient only at its top-k entries: they are found by one scan
  without gradient and only those k entries are recomputed with gradient (same values, same
  gradient; editors/patch_memory.py). On CPU the scan reads an int8 copy of the memory under a
  proven error bound and rescores in fp32 only the rows the bound cannot rule out: the same top-k
  as the fp32 scan (`memory_scan`).
* The paper trains on the example repeated 8 times as a batch. We edit in eval mode (no
  dropout), where 8 identical copies give exactly the gradient of one, so one copy is used.
* Stop when the edit holds (every target token greedy-correct, or the label's sign right) *and*
  the patch is silent on every memory query (constraint 15, which the memory loss only
  approximates): pre-activation at most the activation's own zero point (ReLU 0, GELU -3,
  SiLU -8; an explicit `beta` if lower), or at `max_steps`. For gated MLPs the loss still aims
  at beta = -3, a margin below ReLU's zero. Stopping at the first correct prediction alone left the patch
  firing on memory queries after a handful of steps; the published code instead trains at least
  100 steps (`min_steps`). `stop_margin` > 0 demands a logit margin, which raises GR.

Fast path: everything before the patched FFN is computed once per edit (its queries, its output
with the earlier patches, the residual), and each step runs only what follows it
(`ModelAdapter.capture`): at the last FFN patch -> residual -> norm -> head on the scored rows
(all position-wise); at an earlier FFN the block's output on every position and each later block,
called with the arguments it got in the captured forward. Exact at any layer (tests compare it
with `mode=naive`, which runs the full model every step). `step=closed` writes the patch's
gradient out instead of running autograd through it (editors/tpatcher_step.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.models.base import EncodedBatch, FFNCache
from benchmark.types import EditorData, Example
from editors.base import Check, EditResult, HookedEditor, ReferenceOutputs
from editors.configs.tpatcher import ACTIVATION_NAMES, MEMORY_LOSSES, RECIPE_DEFAULTS, RECIPES, TPatcherConfig  # noqa: F401  (its config, torch-free)
from editors.patch_memory import QUANTIZED_SCAN, QueryMemory, smooth_top
from editors.tpatcher_official import edit_official
from editors.tpatcher_step import ClosedStep

ACTIVATIONS = dict(zip(ACTIVATION_NAMES, (F.relu, F.gelu, F.silu)))
THRESHOLDS = {"gelu": (-3.0, 3.0), "relu": (0.0, 0.0), "silu": (-8.0, 8.0)}
GATED_DEFAULT = ("relu", -3.0, 3.0)


def info_max(values: Tensor | None) -> float:
    return float(values.max()) if values is not None and values.numel() else float("-inf")


class PatchBank(nn.Module):
    """The frozen patches of one FFN: delta(q) = act(q K + b) V."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        self.act, self.act_name = ACTIVATIONS[activation], activation
        self.register_buffer("keys", torch.zeros(width, 0))
        self.register_buffer("bias", torch.zeros(0))
        self.register_buffer("values", torch.zeros(0, width))

    def __len__(self) -> int:
        return self.bias.numel()

    def activations(self, q: Tensor) -> Tensor:
        return q @ self.keys.to(q.dtype) + self.bias.to(q.dtype)

    def forward(self, q: Tensor) -> Tensor:
        return self.act(self.activations(q)) @ self.values.to(q.dtype)

    def append(self, keys: Tensor, bias: Tensor, values: Tensor) -> None:
        self.keys = torch.cat([self.keys, keys.detach()], 1)
        self.bias = torch.cat([self.bias, bias.detach()])
        self.values = torch.cat([self.values, values.detach()])

    def truncate(self, n: int) -> None:
        self.keys, self.bias, self.values = self.keys[:, :n], self.bias[:n], self.values[:n]


@dataclass
class _Patches:
    """The n new patches of one edit: keys [d, n], biases [n], values as direction x scale [n, d]."""

    keys: nn.Parameter
    bias: nn.Parameter
    value_dir: nn.Parameter
    value_scale: nn.Parameter

    @classmethod
    def start(cls, own: Tensor, width: int, value_scale: float) -> _Patches:
        n = len(own)
        # v' ~ U(0, 1), drawn on the CPU, then moved: the same seed gives the same draws on any device
        return cls(keys=nn.Parameter((own / own.pow(2).sum(-1, keepdim=True)).T.clone()),  # initial activation 1
                   bias=nn.Parameter(torch.zeros(n, device=own.device)),
                   value_dir=nn.Parameter(torch.rand(n, width).to(own.device)),
                   value_scale=nn.Parameter(torch.full((n, width), value_scale, device=own.device)))  # n_p

    def parameters(self) -> list[nn.Parameter]:
        return [self.keys, self.bias, self.value_dir, self.value_scale]

    def values(self) -> Tensor:
        return self.value_dir * self.value_scale

    def delta(self, act, q: Tensor) -> Tensor:
        """What the patches add to the FFN's output at queries q."""
        return act(q.to(self.keys.dtype) @ self.keys + self.bias) @ self.values()


class _Screening:
    """`memory_refresh` > 1: the memory loss reads only candidate rows, chosen by a full scan
    every `memory_refresh` steps; the stop rule still reads every row."""

    def __init__(self, editor: TPatcherEditor):
        self.editor, self.refresh = editor, editor.config.memory_refresh
        self.current: QueryMemory | None = None
        self.rows: Tensor | None = None
        self.last_scan, self.missed, self.scans = 0, 0, 0

    def screen(self, step: int, own: Tensor, patches: _Patches) -> QueryMemory:
        if self.current is None or step - self.last_scan >= self.refresh:
            keys, bias = patches.keys.detach(), patches.bias.detach()
            activation = ((own * keys.T).sum(-1) + bias)
            self.current, self.rows, miss = self.editor._screen(keys, bias, activation, self.rows)
            self.last_scan, self.missed, self.scans = step, self.missed + miss, self.scans + 1
        return self.current

    @torch.no_grad()
    def silent_on_all(self, patches: _Patches) -> bool:
        quiet = float((self.editor.memory.products(patches.keys) + patches.bias).max()) <= self.editor.silent_below
        if not quiet:
            self.last_scan = -self.refresh  # rescan before the next step
        return quiet


class TPatcherEditor(HookedEditor):
    config_class = TPatcherConfig
    # the memory losses read the pool; the published stop rule reads D_val
    traits = HookedEditor.traits.but(pool=lambda c: c.memory_loss != "none",
                                     val=lambda c: c.recipe == "official" and c.memory_loss != "none")

    def __init__(self, config: TPatcherConfig, adapter):
        super().__init__(config, adapter)
        try:
            site = adapter.ffn_site(config.layer)
        except ValueError as err:
            raise ValueError(f"editor.layer: {err}") from None
        if config.activation != "auto":
            act = config.activation
            beta, gamma = THRESHOLDS[act]
        elif site.gated:
            act, beta, gamma = GATED_DEFAULT
        else:
            act = site.activation
            beta, gamma = THRESHOLDS[act]
        self.beta = config.beta if config.beta is not None else beta
        self.gamma = config.gamma if config.gamma is not None else gamma
        # Below this the patch's output is (near) zero: the paper's beta for the activation.
        # The stop rule tests it; the loss aims lower (beta) where the activation is chosen.
        self.silent_below = min(self.beta, THRESHOLDS[act][0]) if config.beta is not None else THRESHOLDS[act][0]
        self.site = site
        self.bank = PatchBank(site.width, act).to(adapter.device)  # where the patches' queries come from
        self.act = self.bank.act
        on_cpu = torch.device(adapter.device).type == "cpu"
        if config.memory_scan == "int8" and not (on_cpu and QUANTIZED_SCAN):
            raise ValueError("editor.memory_scan=int8 needs the model on CPU and torch's int8 kernel; use auto or fp32")
        # reuse on CPU, where a scan reads M at memory speed; a GPU's scan is fast anyway (unmeasured there)
        reuse = config.memory_reuse and on_cpu
        self.memory = QueryMemory(site.width, quantized=self._int8_scan(config, on_cpu, reuse), transposed=True,
                                  reuse=reuse, reuse_rank=config.memory_basis)
        self.patch_queries = torch.zeros(0, site.width)  # each patch's own mistake query (Fig. 5)
        self.patch_labels: list[str] = []  # "edit.mistake", as the paper labels Fig. 5
        self.initial_memory_len = 0
        self.initial_val_memory = self.val_memory = torch.zeros(0, site.width)  # recipe=official only
        self.kl_pool: list[Example] = []  # memory_loss=kl: the memory examples
        self.references = ReferenceOutputs(adapter)
        self._handles = []
        self._enable()

    # -- the patch hook ----------------------------------------------------------------------
    def _install(self) -> list:
        return self.adapter.add_to_ffn(lambda q: self.bank(q) if len(self.bank) else None, self.config.layer)

    def params_added(self) -> int:
        return len(self.bank) * (2 * self.site.width + 1)

    # -- memory ------------------------------------------------------------------------------
    def _queries(self, examples: list[Example]) -> Tensor:
        step, rows = self.adapter.config.eval_batch_size, []
        for i in range(0, len(examples), step):
            part = examples[i : i + step]
            batch = self.adapter.encode([e.prompt for e in part], [e.target for e in part])
            rows.append(self.adapter.memory_queries(batch, self.config.layer).float())
        return torch.cat(rows) if rows else torch.zeros(0, self.site.width)

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        self.memory.to(self.adapter.device)
        self.memory.append(self._queries(data.pool).to(self.adapter.device))
        self.initial_memory_len = len(self.memory)
        self.choose_scan()
        self.kl_pool = list(data.pool) if self.config.memory_loss == "kl" else []
        if self.config.recipe == "official":  # its stop rule reads a memory of D_val's queries
            if not data.val and self.config.memory_loss != "none":
                raise ValueError("editor.recipe=official reads its stop rule on a D_val memory, and this run hands "
                                 "the editor no D_val (loop.split=val, or data without one)")
            self.initial_val_memory = self._queries(data.val).to(self.adapter.device)
            self.val_memory = self.initial_val_memory

    @staticmethod
    def _int8_scan(config: TPatcherConfig, on_cpu: bool, reuse: bool) -> bool:
        """Whether the memory keeps an int8 copy: memory_scan=int8, or auto on CPU without reuse.
        With reuse, auto scans in fp32: the steps after an int8 scan start from its looser bounds
        and rescore more rows (timed: docs/performance.md, "T-Patcher's memory scans")."""
        return on_cpu and (config.memory_scan == "int8" or (config.memory_scan == "auto" and not reuse))

    def choose_scan(self) -> None:
        """memory_scan=auto with an int8 copy: the first scans of the run's edits time the int8 and
        the fp32 scan in turn, and the faster is kept (QueryMemory.start_trial)."""
        if self.config.memory_scan == "auto" and self.memory.quantized:
            self.memory.start_trial()

    def check(self, example: Example) -> Check:
        """The loop's check of a stream example also reads its FFN queries, which the memory takes
        in `after_example` without a second forward (patches leave the queries as they are)."""
        if not self.config.memory_update:
            return super().check(example)
        score, queries = self.adapter.score_and_queries(example.prompt, example.target, self.config.layer)
        return Check(score, carry=queries)

    def after_example(self, example: Example, check: Check) -> None:
        if self.config.memory_update and self.config.recipe != "official":  # official: edited examples only
            self.memory.append(check.carry if check.carry is not None else self._queries([example]))

    def reset(self) -> None:
        super().reset()
        self.bank.truncate(0)
        self.patch_queries = self.patch_queries[:0]
        self.patch_labels = []
        self.memory.truncate(self.initial_memory_len)
        self.val_memory = self.initial_val_memory

    def edit_state(self) -> dict:
        return {"keys": self.bank.keys.clone(), "bias": self.bank.bias.clone(), "values": self.bank.values.clone(),
                "queries": self.patch_queries.clone(), "labels": list(self.patch_labels),
                "memory": self.memory.matrix[self.initial_memory_len :].clone(),
                "val_memory": self.val_memory[len(self.initial_val_memory) :].clone()}

    def load_edit_state(self, state: dict) -> None:
        self.bank.truncate(0)
        self.bank.append(state["keys"], state["bias"], state["values"])
        self.patch_queries, self.patch_labels = state["queries"].clone(), list(state["labels"])
        self.memory.truncate(self.initial_memory_len)
        self.memory.append(state["memory"])
        self.val_memory = torch.cat([self.initial_val_memory, state["val_memory"].to(self.initial_val_memory)])

    # -- editing -------------------------------------------------------------------------------
    def _solved(self, batch: EncodedBatch, logits: Tensor) -> bool:
        adapter, margin = self.adapter, self.config.stop_margin
        if not bool(adapter.token_correct(batch, logits).all()):
            return False
        return not margin or bool((adapter.task.margin(logits, batch.targets) >= margin).all())

    def losses(self, logits: Tensor, batch: EncodedBatch, own: Tensor, keys: Tensor, bias: Tensor,
               memory: QueryMemory | None = None) -> dict[str, Tensor]:
        """Each term of the patch loss; `own` are the patches' own queries [n, d]. Also returns
        the largest memory activation under "memory_max" (not a loss term). `memory` is the
        memory to read (the screened candidates between full scans; the whole memory by default)."""
        cfg = self.config
        memory = self.memory if memory is None else memory
        A = (own * keys.T).sum(-1) + bias  # [n]
        out = {"edit": self.adapter.loss(batch, logits)}
        out["activation"] = torch.exp(-A).squeeze(0) if len(A) == 1 else smooth_top(-A, cfg.topk_activation)
        if cfg.memory_loss.startswith("l_m1") and len(memory):
            n = keys.shape[1]
            k, b = keys.detach(), bias.detach()
            # S(.; k) has gradient only at its top-k entries: find them without gradient, then
            # recompute just those k entries with it (same values, same gradient).
            top1, top2 = memory.top_entries(k, b, self._shifts(A.detach(), b), cfg.topk)
            entries1 = memory.entries(keys, bias, top1)
            out["memory_max"] = entries1.detach().max()
            out["memory1"] = torch.exp(entries1 - self.beta).mean()
            if cfg.memory_loss == "l_m1+l_m2":
                entries2 = entries1 if top2 is top1 else memory.entries(keys, bias, top2)  # one patch: same entries
                out["memory2"] = torch.exp(entries2 - A[top2 % n] + self._shift).mean()
        return out

    def _kl_term(self, new_delta):
        """Table 3's KL ablation: KL(original model || patched model) on `kl_examples` memory examples
        sampled once per edit (the code's kl memory loss, reference the original model). Everything
        up to the patched FFN is captured once, so a step runs only what follows it (fast mode)."""
        cfg, adapter = self.config, self.adapter
        sample = random.sample(self.kl_pool, min(cfg.kl_examples, len(self.kl_pool)))
        batch = adapter.encode([e.prompt for e in sample], [e.target for e in sample])
        # the original model's outputs (once per example), prepared once for every step
        reference = adapter.task.kl_reference(self.references(sample, self.disabled))
        with torch.no_grad():
            cache = adapter.capture(batch, cfg.layer) if cfg.mode == "fast" else None

        def kl() -> Tensor:
            if cache is not None:
                logits = cache.finish(cache.ffn_out + new_delta(cache.query).to(cache.ffn_out.dtype))
            else:
                with adapter.added_to_ffn(new_delta, cfg.layer):
                    logits = adapter.scored_logits(batch)
            return adapter.task.kl(reference, logits)

        return kl

    @property
    def _shift(self) -> float:
        return self.gamma if self.config.l_m2_sign == "margin" else -self.gamma

    def _shifts(self, A: Tensor, bias: Tensor) -> list[Tensor]:
        """Per-patch offsets under which l_m1 and l_m2 rank the memory entries."""
        return [torch.zeros_like(bias), self._shift - A]

    @torch.no_grad()
    def _screen(self, keys: Tensor, bias: Tensor, A: Tensor,
                previous: Tensor | None) -> tuple[QueryMemory, Tensor, int]:
        """One full scan: the memory rows holding the top `memory_candidates * topk` entries of
        either memory loss, as a small memory read until the next scan. Also counts the true
        top-k rows the previous candidates had missed (the screen's measured error)."""
        cfg, n = self.config, keys.shape[1]
        full = self.memory.products(keys) + bias
        wide = min(cfg.memory_candidates * cfg.topk, full.numel())
        shifted = [(full + shift).flatten() for shift in self._shifts(A, bias)]
        rows = torch.cat([v.topk(wide).indices // n for v in shifted]).unique()
        missed = 0
        if previous is not None:
            true_rows = torch.cat([v.topk(min(cfg.topk, v.numel())).indices // n for v in shifted]).unique()
            missed = int((~torch.isin(true_rows, previous)).sum())
        screen = QueryMemory(self.memory.width).to(self.memory.rows.device)
        screen.append(self.memory.matrix[rows])
        return screen, rows, missed

    def edit(self, example: Example) -> EditResult:
        if self.config.recipe == "official":
            return self._edit_official(example)
        batch, cache, own = self._mistakes(example)
        patches = _Patches.start(own, self.site.width, self.config.value_scale)
        scanned = dict(self.memory.scans)
        steps, solved, quiet, screening = self._train(batch, cache, own, patches)
        self.bank.append(patches.keys.detach(), patches.bias.detach(), patches.values().detach())
        self._label_patches(own)
        return EditResult(steps=steps, info=self._report(own, patches, solved, quiet, scanned, screening))

    def _edit_official(self, example: Example) -> EditResult:
        result, own = edit_official(self, example)
        self._label_patches(own)
        if self.config.memory_update:  # the edited example joins both memories (T-patch.py:102-103)
            queries = self._queries([example])
            self.memory.append(queries)
            self.val_memory = torch.cat([self.val_memory, queries.to(self.val_memory)])
        return result

    def _mistakes(self, example: Example) -> tuple[EncodedBatch, FFNCache, Tensor]:
        """The edit's forward captured at the patched FFN (earlier patches in place), and the
        queries of the positions to patch: each wrong target token, up to max_patches."""
        cfg, adapter = self.config, self.adapter
        batch = adapter.encode([example.prompt], [example.target])
        cache = adapter.capture(batch, cfg.layer)
        wrong = (~adapter.token_correct(batch, cache.logits)).nonzero().squeeze(1)
        rows = wrong[: cfg.max_patches]  # a classifier scores one position: its row 0
        if len(rows) == 0:  # right under teacher forcing yet judged wrong (normalisation): patch the first
            rows = torch.arange(1)
        return batch, cache, cache.query[cache.scored][rows].float()

    def _train(self, batch: EncodedBatch, cache: FFNCache, own: Tensor,
               patches: _Patches) -> tuple[int, bool, bool, _Screening | None]:
        """The patch loss until the stop rule holds (after min_steps) or max_steps."""
        cfg, adapter = self.config, self.adapter
        # fused: one kernel for the four small tensors, where the per-tensor loop cost ~0.5 ms a step
        optimizer = torch.optim.Adam(patches.parameters(), lr=cfg.lr, fused=own.device.type in ("cpu", "cuda"))
        query = cache.query.to(patches.keys.dtype)
        new_delta = partial(patches.delta, self.act)
        kl_term = self._kl_term(new_delta) if cfg.memory_loss == "kl" and self.kl_pool else None
        screening = _Screening(self) if (cfg.memory_loss.startswith("l_m1") and cfg.memory_refresh > 1
                                        and len(self.memory) > cfg.memory_candidates * cfg.topk) else None
        closed = self._closed_step() if cfg.step == "closed" else None
        steps, solved, quiet = 0, False, False
        with torch.enable_grad():
            for steps in range(cfg.max_steps + 1):
                screen = screening.screen(steps, own, patches) if screening else None
                if closed is not None:
                    state = closed.forward(query, own, patches.keys, patches.bias, patches.values(), self.act,
                                           self.memory if screen is None else screen)
                    added = state["delta"].to(cache.ffn_out.dtype).requires_grad_()
                    logits = cache.finish(cache.ffn_out + added)
                    edit_loss = adapter.loss(batch, logits)
                    terms = closed.terms(edit_loss, state)
                elif cfg.mode == "fast":
                    logits = cache.finish(cache.ffn_out + new_delta(query).to(cache.ffn_out.dtype))
                    terms = self.losses(logits, batch, own, patches.keys, patches.bias, screen)
                else:
                    with adapter.added_to_ffn(new_delta, cfg.layer):
                        logits = adapter.scored_logits(batch)
                    terms = self.losses(logits, batch, own, patches.keys, patches.bias, screen)
                solved = self._solved(batch, logits.detach())
                quiet = not cfg.stop_below_beta or float(terms.get("memory_max", -torch.inf)) <= self.silent_below
                if screening and solved and quiet and cfg.stop_below_beta:  # the stop rule reads all the memory
                    quiet = screening.silent_on_all(patches)
                if (solved and quiet and steps >= cfg.min_steps) or steps == cfg.max_steps:
                    break
                if closed is not None:  # autograd on the tail alone, then the patch's gradient in closed form
                    (tail_grad,) = torch.autograd.grad(edit_loss, added)
                    closed.gradient(tail_grad.to(query.dtype), query, own, patches, state)
                    optimizer.step()
                    continue
                loss = terms["edit"] + cfg.activation_weight * terms["activation"]
                if "memory1" in terms:
                    loss = loss + cfg.memory_weight * (terms["memory1"] + terms.get("memory2", 0.0))
                if kl_term is not None:
                    loss = loss + cfg.memory_weight * kl_term()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return steps, solved, quiet, screening

    def _closed_step(self) -> ClosedStep:
        cfg = self.config
        return ClosedStep(self.bank.act_name, self.beta, self._shift, cfg.activation_weight, cfg.memory_weight,
                          cfg.topk, cfg.topk_activation, cfg.memory_loss)

    @torch.no_grad()
    def _report(self, own: Tensor, patches: _Patches, solved: bool, quiet: bool, scanned: dict,
                screening: _Screening | None) -> dict[str, Any]:
        """The edit's record: `solved` is the stop rule (the edit holds and, with stop_below_beta,
        the patch is silent on the memory); an edit stopped by max_steps says which half failed."""
        keys, bias = patches.keys.detach(), patches.bias.detach()
        own_act = (own @ keys + bias).diagonal() if len(own) > 1 else (own @ keys + bias).reshape(-1)
        mem_max = (self.memory.products(keys) + bias).max(0).values if len(self.memory) else None
        info = {"patches": len(own), "solved": solved and quiet, "holds": solved, "activation": own_act.tolist(),
                "memory_max": mem_max.tolist() if mem_max is not None else []}
        if not (solved and quiet):
            info["failure"] = self._failure(own, own_act, mem_max, solved)
        bounded = self.memory.scans["bounded"] - scanned["bounded"]
        if bounded:  # what the int8 scan left to rescore in fp32, per step (of the memory's rows)
            rescored = self.memory.scans["rescored_rows"] - scanned["rescored_rows"]
            info["rescored_rows_per_scan"] = round(rescored / bounded)
        reused = self.memory.scans["reused"] - scanned["reused"]
        if reused:  # steps that read no row of the memory, and the rows they rescored each
            info["reused_scans"] = reused
            rescored = self.memory.scans["reused_rows"] - scanned["reused_rows"]
            info["rescored_rows_per_reuse"] = round(rescored / reused)
        if screening:  # rows of the true top-k that the candidates lacked, summed over rescans
            info.update(memory_scans=screening.scans, screen_missed_rows=screening.missed)
        return info

    def _label_patches(self, own: Tensor) -> None:
        """Keep the new patches' own queries and labels "edit.mistake" (Fig. 5)."""
        edit_no = len(set(label.split(".")[0] for label in self.patch_labels)) + 1
        self.patch_queries = torch.cat([self.patch_queries.to(own.device), own])
        self.patch_labels += [f"{edit_no}.{j + 1}" for j in range(len(own))]

    @torch.no_grad()
    def _failure(self, own: Tensor, own_act: Tensor, mem_max: Tensor | None, holds: bool) -> str:
        """Why an edit ran to max_steps, in one line: which half of the stop rule failed, and how
        close the edit's queries are to the memory (near-identical queries, as a tiny model's are,
        make "fire on the edit, stay silent on the memory" infeasible)."""
        why = (f"the patch fires on the memory (pre-activation {info_max(mem_max):.3g} > {self.silent_below:g})"
               if holds else "the edit does not hold")
        if float(own_act.min()) <= self.silent_below:
            why += f"; the patch is silent on its own query (pre-activation {float(own_act.min()):.3g})"
        if len(self.memory):
            # one scan and one norm pass: normalising the whole memory first cost ~0.3 s an edit at 40k rows
            row_norms = self.memory.matrix.norm(dim=1).clamp_min(1e-12)
            cosine = self.memory.products(own.T) / (row_norms[:, None] * own.norm(dim=1).clamp_min(1e-12))
            why += f"; nearest memory query at cosine {float(cosine.max()):.4f}"
        return f"max_steps ({self.config.max_steps}): {why}"

    @torch.no_grad()
    def fold_report(self) -> dict:
        """Patch-by-mistake activation matrix (paper Fig. 5): row i is patch i, column j mistake
        query j (each patch's own query, in edit order), value act(q_j . k_i + b_i)."""
        matrix = self.act(self.bank.activations(self.patch_queries)).T if len(self.bank) else torch.zeros(0, 0)
        scan = {"memory_scan": "int8" if self.memory.quantized else "fp32", "scan_ms": dict(self.memory.scan_ms)}
        return {"activation_matrix": matrix.tolist(), "labels": list(self.patch_labels), **scan}
