"""The model-adapter interface: the only place that knows a model family's internals.

Editors and the loop see a model through three ideas:

* an `EncodedBatch` whose *scored positions* are the hidden states that decide the answer
  (the [CLS] state of a classifier, the positions that predict each target token of a generator);
* a block's FFN (`FFNSite`): the module whose input is the FFN query `q`, the module whose output
  is `FFN(q)` (before the residual add), and the activation;
* `FFNCache.finish(ffn_out)`: everything after one block's FFN, run from cached inputs. After the
  last block's FFN all that follows is position-wise (residual add, norms, head), so it runs on the
  scored positions alone. After an earlier block's FFN the later blocks mix positions: they run on
  every position, called with exactly the arguments (masks, rotary tables, encoder states) they
  received in the captured forward. Either way the logits are the model's own, not an
  approximation; this is what makes T-Patcher's fast path exact at any layer.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.models.config import ModelConfig  # noqa: F401  (its config, torch-free)
from benchmark.models.task import Task


@contextmanager
def installed(handles: list) -> Iterator[list]:
    """Hooks (their handles) that live for the with-block only: removed on any exit."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


class _FrozenProjection(torch.autograd.Function):
    """x W^T for a frozen W and a few rows x; the backward gives dL/dx = g W only (autograd's own
    backward of W x^T, W^T g^T, took 104 ms for 7 rows of a 49,152 x 576 W on 2 cores).

    The route (`_route`): oneDNN's linear where torch has it (x86 and ARM CPU builds, float32,
    oneDNN's exact float32 precision), with g W as g (W^T)^T from a transposed copy of W
    (`_transposed`); otherwise (a GPU, float64, a torch without oneDNN) the BLAS products that
    measured fastest on a CPU: W x^T (W's rows read in order) and g W on 1 thread, x (W^T) and
    (W^T g^T)^T on 2 or more. On this project's 2-core
    AMD EPYC, MKL's products of a few rows ran erratically by row count (2 threads, medians of 9
    beside other runs: forward of 7 rows 23.2 ms as W x^T, 41.1 as x (W^T); backward 37.6 as g W,
    20.1 from W^T) and oneDNN's steadily (11.4 and 12.0 ms; 1 row to 512 rows, never the slower;
    `python -m benchmark.perf tpatcher` times a T-Patcher edit both ways). A fixed rule, not a
    timed choice, so that a run's rounding does not depend on how busy the machine was."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, transposed: Tensor | None, route: str) -> Tensor:
        ctx.save_for_backward(weight if transposed is None else transposed)
        ctx.transposed, ctx.route = transposed is not None, route
        if route == "onednn":
            return _onednn_linear(x, weight)
        return x @ transposed if transposed is not None else (weight @ x.T).T.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        if ctx.route == "onednn":  # weight is W^T: g W = g (W^T)^T, oneDNN's linear with W^T as its weight
            return _onednn_linear(grad, weight), None, None, None
        return ((weight @ grad.T).T if ctx.transposed else grad @ weight), None, None, None


def _onednn_linear(x: Tensor, weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, None, "none", [], "")


# False: the BLAS route everywhere (benchmark.perf times both; tests check both)
ONEDNN_TAILS = True


@functools.cache
def _has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _route(x: Tensor, weight: Tensor) -> str:
    """onednn | blas: which products `_FrozenProjection` uses for these rows and weight (see there)."""
    usable = (ONEDNN_TAILS and weight.device.type == "cpu" and weight.dtype == x.dtype == torch.float32
              and weight.is_contiguous() and _has_onednn_linear()
              and torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee"))  # no bf16/tf32 arithmetic
    return "onednn" if usable else "blas"


# a layer's transposed copy (`_transposed`), kept as long as the layer lives
_TRANSPOSED: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple, Tensor]] = weakref.WeakKeyDictionary()


def _transposed(layer: nn.Linear, route: str) -> Tensor | None:
    """A contiguous copy of the frozen `layer.weight`'s transpose, made once and kept for the layer
    while the weight's storage, version and device stay the same; it costs W's size once. Read by
    the oneDNN route's backward, and by the BLAS route's on a CPU with 2 or more threads (on 1
    thread MKL's g W was the faster: 7 rows 15.9 against 23.5 ms from the copy)."""
    weight = layer.weight
    if route == "blas" and (weight.device.type != "cpu" or torch.get_num_threads() < 2):
        return None
    stamp = (weight.data_ptr(), weight._version, weight.shape)
    kept = _TRANSPOSED.get(layer)
    if kept is None or kept[0] != stamp:
        kept = _TRANSPOSED[layer] = (stamp, weight.detach().T.contiguous())
    return kept[1]


def project(x: Tensor, layer: nn.Linear) -> Tensor:
    """`layer(x)` for the rows x of a tail; through `_FrozenProjection` when its weight is frozen."""
    if not isinstance(layer, nn.Linear) or layer.weight.requires_grad or x.dim() != 2:
        return layer(x)
    route = _route(x, layer.weight)
    transposed = _transposed(layer, route) if x.requires_grad else None  # only a backward reads it
    out = _FrozenProjection.apply(x, layer.weight, transposed, route)
    return out if layer.bias is None else out + layer.bias


@dataclass
class FFNSite:
    """Where a transformer block's FFN starts and ends. `in_proj`'s input is the query q."""

    in_proj: nn.Module
    out_proj: nn.Module
    activation: str  # "gelu" | "relu" | "silu"
    gated: bool  # SwiGLU-style MLP (act(gate(q)) * up(q))
    width: int  # dimension of q and of FFN(q)
    layer_index: int
    is_last: bool
    up_proj: nn.Module | None = None  # a gated FFN's second input projection (None: not gated)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(input size, output size) of a linear layer: nn.Linear keeps [out, in], GPT-2's Conv1D [in, out]."""
    shape = tuple(module.weight.shape)
    return shape[::-1] if isinstance(module, nn.Linear) else shape


@dataclass
class EncodedBatch:
    inputs: dict[str, Tensor]  # keyword arguments of the model's forward
    score_mask: Tensor  # [B, T] bool over the sequence that holds the scored positions
    targets: Tensor  # classification: float labels [B]; generation: token ids [N]
    owner: Tensor  # [N] example index of each scored position
    size: int  # number of examples B
    valid_mask: Tensor  # [B, T] bool: every real (non-padding) position

    def lengths(self) -> Tensor:
        """[B] each example's real positions over all the model's inputs (a seq2seq model's
        encoder and decoder both): what a batch pads the others up to."""
        masks = [v for k, v in self.inputs.items() if k.endswith("attention_mask")]
        return sum(m.sum(1) for m in masks) if masks else self.valid_mask.sum(1)


@dataclass
class BlockCall:
    """One later block as the captured forward called it: replayed on a new hidden state."""

    module: nn.Module
    args: tuple
    kwargs: dict

    def __call__(self, hidden: Tensor) -> Tensor:
        if self.args:
            out = self.module(hidden, *self.args[1:], **self.kwargs)
        else:
            out = self.module(**{**self.kwargs, "hidden_states": hidden})
        return out[0] if isinstance(out, tuple) else out

    def input(self) -> Tensor:
        """The hidden state the block was called with."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def without_input(self) -> BlockCall:
        """The same call without its hidden input (a replay passes its own), so that a kept call
        does not hold that tensor alive."""
        if self.args:
            return BlockCall(self.module, (None, *self.args[1:]), self.kwargs)
        return BlockCall(self.module, (), {k: v for k, v in self.kwargs.items() if k != "hidden_states"})


@dataclass
class FFNCache:
    """What one block's FFN saw and produced on a batch, and how to finish the forward from there.

    Rows are the positions whose FFN output can reach a scored logit: the scored positions when
    the block is the last, every position ([B*T], padding included, as a hook sees them) otherwise.
    `scored` marks the scored positions among the rows (in batch order)."""

    query: Tensor  # [R, d]
    ffn_out: Tensor  # [R, d] FFN(q) with whatever hooks add to it, before the residual add
    residual: Tensor  # [R, d]
    scored: Tensor  # [R] bool
    memory: Tensor  # [R] bool: the rows that are memory queries (`ModelAdapter.memory_queries`)
    logits: Tensor | None = None  # the captured forward's scored logits
    finish: Callable[[Tensor], Tensor] | None = None  # new ffn_out rows -> scored logits


def _first_tensor(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else next(iter(kwargs.values()))


class ModelAdapter:
    """Base adapter. Subclasses set `family`, implement `encode`, `ffn_site`, `layer_modules`,
    `_residual_site`, `block_output`, `head` and `_forward_scored`."""

    family: str = ""
    task: Task  # the adapter's task (benchmark.models.task): losses, right answers, KL
    replays_blocks: bool = False  # implements `_scored_after_blocks` (evaluation from a cached prefix)

    def __init__(self, model: nn.Module, tokenizer: Any, config: ModelConfig):
        self.in_flight: EncodedBatch | None = None  # the batch of the adapter's forward in progress
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.prefix = None  # a `PrefixCache` (prefix_cache.py), lent by the loop for its own scoring only
        self._lengths: dict[tuple[str, str], int] = {}  # (prompt, repr(target)) -> its real positions

    @property
    def scores_by_generation(self) -> bool:
        """Whether `scores` reads generated text rather than the teacher-forced forward (hooks on
        the adapter's own forwards then do not see the scoring)."""
        return False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- family-specific ----------------------------------------------------------------------
    def encode(self, prompts: list[str], targets: list[Any]) -> EncodedBatch:
        raise NotImplementedError

    def ffn_site(self, layer: int = -1) -> FFNSite:
        raise NotImplementedError

    def layer_modules(self) -> nn.ModuleList:
        raise NotImplementedError

    attention: dict[str, str] = {}  # role (q, k, v, o; GPT-2: qkv, o) -> the block's submodule

    def block_linears(self, layer: int) -> dict[str, nn.Module]:
        """The linear layers of block `layer` by role: its self-attention's (`attention`) and its
        FFN's `ffn_in`, `ffn_up` (gated FFNs) and `ffn_out`, so editors that adapt any of them
        (LoRA) name roles, never modules."""
        site = self.ffn_site(layer)
        block = self.layer_modules()[site.layer_index]
        found = {role: block.get_submodule(path) for role, path in self.attention.items()}
        found.update(ffn_in=site.in_proj, ffn_out=site.out_proj)
        if site.up_proj is not None:
            found["ffn_up"] = site.up_proj
        return found

    def _residual_site(self, layer: int) -> tuple[nn.Module, int]:
        """(module, argument index) whose forward input is the residual that FFN(q) is added to."""
        raise NotImplementedError

    def block_output(self, layer: int, ffn_out: Tensor, residual: Tensor) -> Tensor:
        """Block `layer`'s output from its FFN output and the residual (pre-LN: their sum;
        post-LN: the block's norm of it)."""
        raise NotImplementedError

    def head(self, hidden: Tensor) -> Tensor:
        """Logits from the last block's output at scored rows (final norm, pooler, vocabulary head)."""
        raise NotImplementedError

    def tail(self, ffn_out: Tensor, residual: Tensor) -> Tensor:
        """Logits at scored rows from the last FFN's output; exact because all of it is position-wise."""
        return self.head(self.block_output(-1, ffn_out, residual))

    def _forward_scored(self, batch: EncodedBatch) -> Tensor:
        raise NotImplementedError

    def _scored_after_blocks(self, hidden: Tensor, batch: EncodedBatch) -> Tensor:
        """The scored logits from the last block's output [B, T, d]: what `_forward_scored` does
        after the blocks, the same operations on the same tensors (for `replays_blocks`)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def _site(self, layer: int, projections, activation: str, gated: bool, width: int) -> FFNSite:
        """FFNSite of block `layer`; `projections(block)` gives its (in_proj, out_proj) or, for a
        gated FFN, (in_proj, out_proj, up_proj)."""
        layers = self.layer_modules()
        if not -len(layers) <= layer < len(layers):
            raise ValueError(f"layer {layer} out of range: the model has {len(layers)} blocks "
                             f"({-len(layers)}..{len(layers) - 1})")
        index = layer % len(layers)
        in_proj, out_proj, *up_proj = projections(layers[index])
        return FFNSite(in_proj=in_proj, out_proj=out_proj, activation=activation, gated=gated, width=width,
                       layer_index=index, is_last=index == len(layers) - 1, up_proj=(up_proj or [None])[0])

    def scored_logits(self, batch: EncodedBatch) -> Tensor:
        return self._run(batch)

    def _run(self, batch: EncodedBatch) -> Tensor:
        """Every forward of the adapter's own: hooks that act at the read position
        (`rewrite_at_read`) learn from `in_flight` which batch is passing."""
        self.in_flight = batch
        try:
            return self._forward_scored(batch)
        finally:
            self.in_flight = None

    def loss(self, batch: EncodedBatch, logits: Tensor) -> Tensor:
        return self.task.loss(logits, batch.targets)

    def token_correct(self, batch: EncodedBatch, logits: Tensor) -> Tensor:
        return self.task.correct(logits, batch.targets)

    def example_scores(self, batch: EncodedBatch, logits: Tensor) -> Tensor:
        """Per-example score in [0, 1]: 1 means correct: all its scored positions right (for
        generation, the greedy continuation is the target), or their fraction (token_accuracy). A
        classifier has one scored position per example, so both are its 0/1."""
        ok = self.token_correct(batch, logits).float()
        total = torch.zeros(batch.size, device=ok.device).index_add_(0, batch.owner, torch.ones_like(ok))
        right = torch.zeros(batch.size, device=ok.device).index_add_(0, batch.owner, ok)
        frac = right / total.clamp(min=1)
        return frac if self.config.metric == "token_accuracy" else (frac == 1).float()

    def _scored(self, prompts: list[str], targets: list[Any]) -> Iterator[tuple[list[int], EncodedBatch, Tensor]]:
        """(rows, batch, scored logits) over `prompts` in batches of examples of similar length
        (`by_length`: less padding; an example's outputs do not depend on its batch); a batch scored
        before reruns only the blocks an edit can change, from their cached input (`PrefixCache`,
        exact)."""
        step, cached = self.config.eval_batch_size, self.prefix is not None and self.prefix.check()
        order = self.by_length(prompts, targets)
        for i in range(0, len(order), step):
            rows = order[i : i + step]
            chunk, answers = [prompts[r] for r in rows], [targets[r] for r in rows]
            if cached:
                batch, logits = self.prefix.logits(chunk, answers)
            else:
                batch = self.encode(chunk, answers)
                logits = self.scored_logits(batch)
            yield rows, batch, logits

    def by_length(self, prompts: list[str], targets: list[Any]) -> list[int]:
        """Indices of the examples, fewest real positions first (`EncodedBatch.lengths`, tokenized
        once per example and kept), ties in their order: batches cut from it pad little, and the
        same examples give the same batches. (Ordered by characters, zsRE's D_test and fold 0 on
        SmolLM2 ran 4,876 positions for 3,107 real ones instead of 3,596, in 1.3x the time:
        `python -m benchmark.perf eval`.)"""
        keys = [(p, repr(t)) for p, t in zip(prompts, targets)]
        missing = {k: t for k, t in zip(keys, targets) if k not in self._lengths}
        if missing:
            if len(self._lengths) + len(missing) > 1_000_000:  # a bound on what is kept
                self._lengths.clear()
            lengths = self.encode([p for p, _ in missing], list(missing.values())).lengths().tolist()
            self._lengths.update(zip(missing, lengths))
        return sorted(range(len(keys)), key=lambda i: self._lengths[keys[i]])

    @torch.no_grad()
    def scores(self, prompts: list[str], targets: list[Any]) -> list[float]:
        """Correctness of each (prompt, target), in the order given."""
        out = [0.0] * len(prompts)
        for rows, batch, logits in self._scored(prompts, targets):
            for r, score in zip(rows, self.example_scores(batch, logits).tolist()):
                out[r] = score
        return out

    @torch.no_grad()
    def predictions(self, prompts: list[str], targets: list[Any]) -> list[list[int]]:
        """The model's answer at each scored position of each (prompt, target) under teacher forcing
        on the target (generation: the argmax token after each target prefix; classification: the
        predicted label), as EasyEdit reads locality (`test_prediction_acc(..., locality=True)`)."""
        out: list[list[int]] = [[] for _ in prompts]
        for rows, batch, logits in self._scored(prompts, targets):
            answers = self.task.predicted(logits).tolist()
            for owner, answer in zip(batch.owner.tolist(), answers):
                out[rows[owner]].append(int(answer))
        return out

    @torch.no_grad()
    def answer_nll(self, prompts: list[str], targets: list[Any]) -> list[float]:
        """Each answer's mean negative log-probability per token under teacher forcing (generation
        tasks): what ROME's `test_batch_prediction` compares between the new and the true object."""
        out = [0.0] * len(prompts)
        for rows, batch, logits in self._scored(prompts, targets):
            nll = -torch.log_softmax(logits.float(), -1).gather(1, batch.targets.long()[:, None])[:, 0]
            total = torch.zeros(batch.size, device=nll.device).index_add_(0, batch.owner, nll)
            count = torch.zeros(batch.size, device=nll.device).index_add_(0, batch.owner, torch.ones_like(nll))
            for r, value in zip(rows, (total / count.clamp(min=1)).tolist()):
                out[r] = value
        return out

    def target_ids(self, prompt: str, answer: Any) -> list[int]:
        """The answer as `predictions` gives answers: its token ids (or its label) at the scored
        positions of (prompt, answer)."""
        return self.encode([prompt], [answer]).targets.long().tolist()

    def score_and_queries(self, prompt: str, target: Any, layer: int = -1) -> tuple[float, Tensor]:
        """One example's `scores` and its FFN queries of `layer` (`memory_queries`), from one
        forward where the score is read from the teacher-forced logits."""
        batch = self.encode([prompt], [target])
        cache = self.capture(batch, layer)
        return float(self.example_scores(batch, cache.logits)[0]), cache.query[cache.memory].float()

    @torch.no_grad()
    def memory_queries(self, batch: EncodedBatch, layer: int = -1) -> Tensor:
        """The FFN queries of `layer` through which a change of that FFN can reach an answer: the
        scored positions at the last block; every real position at an earlier one, since the
        later blocks' attention carries it to the scored ones."""
        cache = self.capture(batch, layer)
        return cache.query[cache.memory]

    def block_parameters(self, index: int = -1) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of transformer block `index` (of the blocks whose last FFN is edited:
        the decoder stack of a seq2seq model)."""
        layers = self.layer_modules()
        if not -len(layers) <= index < len(layers):
            raise ValueError(f"block {index} out of range: the model has {len(layers)} blocks (0..{len(layers) - 1})")
        block = layers[index]
        prefix = next(n for n, m in self.model.named_modules() if m is block)
        return [(f"{prefix}.{n}", p) for n, p in block.named_parameters()]

    def last_layer_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return self.block_parameters(-1)

    def embedding_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The input embedding matrix (tied to the output head where the model ties them)."""
        table = self.model.get_input_embeddings().weight
        return [next((n, p) for n, p in self.model.named_parameters() if p is table)]

    def select_parameters(self, which: str) -> dict[str, nn.Parameter]:
        """`all`, `last` (block), `embeddings`, or a block index: the parameters an editor tunes."""
        if which == "all":
            return dict(self.model.named_parameters())
        if which == "last":
            return dict(self.block_parameters(-1))
        if which == "embeddings":
            return dict(self.embedding_parameters())
        try:
            index = int(which)
        except ValueError:
            raise ValueError(f"parameters {which!r}: use all, last, embeddings or a block index") from None
        return dict(self.block_parameters(index))

    @torch.no_grad()
    def answer_embeddings(self, prompts: list[str]) -> Tensor:
        """[B, d] contextual embedding where each prompt's answer is read: the last block's
        residual stream (before the final norm) at the first scored position ([CLS], the last
        prompt token, the decoder's first step). It does not depend on the target, so a
        placeholder target is encoded."""
        placeholder = self.task.placeholder_target
        out = []
        for i in range(0, len(prompts), self.config.eval_batch_size):
            chunk = prompts[i : i + self.config.eval_batch_size]
            batch = self.encode(chunk, [placeholder] * len(chunk))
            seen = self.capture(batch)
            first = torch.searchsorted(batch.owner, torch.arange(batch.size, device=batch.owner.device))
            out.append((seen.residual + seen.ffn_out)[first].float())
        return torch.cat(out) if out else torch.zeros(0, self.ffn_site().width)

    @torch.no_grad()
    def capture(self, batch: EncodedBatch, layer: int = -1) -> FFNCache:
        """One full forward that records block `layer`'s FFN query, output and residual at the
        rows that can reach an answer (see `FFNCache`) and, for an earlier block, the calls of
        every later block, so that `finish` reruns only what follows the FFN."""
        site = self.ffn_site(layer)
        seen: dict[str, Tensor] = {}
        res_module, res_arg = self._residual_site(site.layer_index)
        later = list(self.layer_modules())[site.layer_index + 1 :]
        calls: dict[int, BlockCall] = {}

        def keep_query(_m, args, kwargs):
            seen.setdefault("query", _first_tensor(args, kwargs))

        def keep_residual(_m, args, kwargs):
            seen.setdefault("residual", args[res_arg] if len(args) > res_arg else list(kwargs.values())[res_arg])

        def keep_out(_m, _args, output):
            seen.setdefault("ffn_out", output)

        def keep_call(index):
            def hook(module, args, kwargs):
                calls.setdefault(index, BlockCall(module, args, dict(kwargs)))
            return hook

        with installed([
            site.in_proj.register_forward_pre_hook(keep_query, with_kwargs=True),
            res_module.register_forward_pre_hook(keep_residual, with_kwargs=True),
            site.out_proj.register_forward_hook(keep_out),
            *[block.register_forward_pre_hook(keep_call(i), with_kwargs=True) for i, block in enumerate(later)],
        ]):
            logits = self._run(batch)
        if site.is_last:
            rows = {k: v[batch.score_mask] for k, v in seen.items()}
            n = len(rows["query"])
            ones = torch.ones(n, dtype=torch.bool, device=batch.score_mask.device)
            return FFNCache(**rows, scored=ones, memory=ones, logits=logits,
                            finish=lambda out: self.tail(out, rows["residual"]))
        shape = seen["query"].shape  # [B, T, d]
        rows = {k: v.reshape(-1, v.shape[-1]) for k, v in seen.items()}
        replay = [calls[i] for i in range(len(later))]

        def finish(out: Tensor) -> Tensor:
            hidden = self.block_output(site.layer_index, out.reshape(*shape[:-1], -1),
                                       rows["residual"].reshape(*shape[:-1], -1))
            for call in replay:
                hidden = call(hidden)
            return self.head(hidden[batch.score_mask])

        return FFNCache(**rows, scored=batch.score_mask.reshape(-1), memory=batch.valid_mask.reshape(-1),
                        logits=logits, finish=finish)

    def trained_suffix(self, params) -> int | None:
        """The first block of the shortest run of last blocks that holds every given parameter, or
        None where one lies outside the blocks (embeddings, final norm, head, a seq2seq encoder):
        then nothing before them is frozen and no prefix can be cached."""
        owner = {id(p): i for i, block in enumerate(self.layer_modules()) for p in block.parameters()}
        found = [owner.get(id(p)) for p in params]
        return None if not found or None in found else min(found)

    @torch.no_grad()
    def recorded_calls(self, batch: EncodedBatch, first: int) -> tuple[Tensor, list[BlockCall]]:
        """One forward of the batch: its scored logits, and the call of block `first` and of every
        later block as that forward made it (`BlockCall`), to replay them on new inputs."""
        blocks = list(self.layer_modules())[first:]
        calls: dict[int, BlockCall] = {}

        def keep_call(index):
            def hook(module, args, kwargs):
                calls.setdefault(index, BlockCall(module, args, dict(kwargs)))
            return hook

        with installed([block.register_forward_pre_hook(keep_call(i), with_kwargs=True)
                        for i, block in enumerate(blocks)]):
            logits = self._run(batch)
        return logits, [calls[i] for i in range(len(blocks))]

    @torch.no_grad()
    def suffix(self, batch: EncodedBatch, first: int,
               as_forward: bool = False) -> tuple[Tensor, Callable[[], Tensor]]:
        """One forward now, recording the call of block `first` and of every later block; returns
        its scored logits and a function that reruns only those blocks and the head (with the
        current weights, under autograd) from the recorded input. Exact while nothing before block
        `first` changes, in eval mode (in train mode dropout would draw the prefix anew). The head
        is `head` on the scored rows (its frozen vocabulary projection is faster, and rounds
        differently from the model's own); `as_forward` finishes as the model's forward does
        instead (`_scored_after_blocks`), so the logits are the full forward's bit for bit."""
        logits, replay = self.recorded_calls(batch, first)
        start = replay[0].input()

        def run() -> Tensor:
            hidden = start
            for call in replay:
                hidden = call(hidden)
            return self._scored_after_blocks(hidden, batch) if as_forward else self.head(hidden[batch.score_mask])

        return logits, run

    def add_to_ffn(self, delta_fn, layer: int = -1) -> list:
        """From now on the FFN output of `layer` is FFN(q) + delta_fn(q) (unchanged where delta_fn
        returns None). Returns the hook handles; removing them restores the model exactly."""
        site = self.ffn_site(layer)
        seen: dict[str, Tensor] = {}

        def keep_query(_m, args, kwargs):
            seen["query"] = _first_tensor(args, kwargs)

        def add_delta(_m, _args, output):
            delta = delta_fn(seen.pop("query"))
            return None if delta is None else output + delta.to(output.dtype)

        return [
            site.in_proj.register_forward_pre_hook(keep_query, with_kwargs=True),
            site.out_proj.register_forward_hook(add_delta),
        ]

    @staticmethod
    def read_positions(batch: EncodedBatch) -> Tensor:
        """[B] each example's first scored position, where its answer starts to be read: the last
        prompt token of a decoder, [CLS], the first mask, the decoder's first step."""
        return batch.score_mask.int().argmax(1)

    def rewrite_at_read(self, fn, layer: int = -1) -> list:
        """From now on, at each example's read position (`read_positions`) of the adapter's own
        forwards, block `layer`'s FFN output row becomes fn(inner, out)[i] where fn returns new
        rows and a bool mask of the rows to replace (or None): `inner` [B, d_ff] is the output
        projection's input there (the FFN's inner activation), `out` [B, d] its output. Other
        positions and forwards the adapter did not start are untouched. Returns the hook handles."""
        site = self.ffn_site(layer)

        def rewrite(_m, args, output):
            batch = self.in_flight
            if batch is None:
                return None
            if output.shape[:2] != batch.score_mask.shape:  # the site is not in the scored stack
                raise RuntimeError(f"block {layer}'s FFN output {tuple(output.shape)} does not line up with the "
                                   f"scored sequence {tuple(batch.score_mask.shape)}")
            rows = torch.arange(batch.size, device=output.device)
            at = self.read_positions(batch).to(output.device)
            new = fn(args[0][rows, at], output[rows, at])
            if new is None:
                return None
            values, hit = new
            output = output.clone()
            output[rows, at] = torch.where(hit[:, None], values.to(output.dtype), output[rows, at])
            return output

        return [site.out_proj.register_forward_hook(rewrite)]

    @contextmanager
    def added_to_ffn(self, delta_fn, layer: int = -1):
        with installed(self.add_to_ffn(delta_fn, layer)):
            yield

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
