"""The task a model answers, as one object its adapter owns (`adapter.task`): what a loss, a
right answer, a margin, a KL between outputs and a new answer to teach mean for it. Editors ask
the task instead of branching on its kind.

A `Task` is also its kind's name (a `str`), so it compares equal to the data's task kind
(`"classification"`, `"generation"`) and prints and serialises as that name.

Classification scores one logit per example (a yes/no claim: a Bernoulli); generation scores a
vocabulary distribution at each target position.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.types import CLASSIFICATION, GENERATION, Example


@dataclass(frozen=True)
class KLReference:
    """The reference side of KL(reference || current) over generation outputs, computed once for
    every step that reads it (`Generation.kl_reference`): its log-probabilities, probabilities and
    their sum per output."""

    logp: Tensor  # [N, V]
    probs: Tensor  # [N, V]
    mass: Tensor  # [N]: 1 up to rounding

    def __len__(self) -> int:
        return len(self.probs)


class _KLToReference(torch.autograd.Function):
    """mean over outputs of KL(p || softmax(z)) = sum p (log p - z + logsumexp(z)), its gradient
    (softmax(z) sum p - p) / N: the value and gradient of `F.kl_div(log_softmax(z), log p,
    log_target=True, reduction="batchmean")` in a few passes over the logits instead of a dozen
    (on a 49,152-token vocabulary that elementwise work was 40% of a KL pass of `ft_kl_last`). The
    value sums the terms as they stand, never p.z and logsumexp(z) apart: those cancel where the
    two distributions agree (a KL of -9e-5 at the reference itself, on the tests' tiny models)."""

    @staticmethod
    def forward(ctx, logits: Tensor, logp: Tensor, probs: Tensor, mass: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, -1)
        ctx.save_for_backward(logits, probs, mass, lse)
        terms = torch.sub(logp, logits).add_(lse[:, None]).mul_(probs)  # 0 where p is 0 (logp -inf masked)
        return terms.sum() / len(logits)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, probs, mass, lse = ctx.saved_tensors
        out = torch.sub(logits, lse[:, None]).exp_().mul_(mass[:, None]).sub_(probs)
        return out.mul_(grad / len(logits)), None, None, None


class Task(str):
    kind = ""
    placeholder_target: Any = None  # a target to encode where only the prompt matters

    def __new__(cls):
        return super().__new__(cls, cls.kind)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per scored position: the model's answer is the target."""
        raise NotImplementedError

    def margin(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per scored position: how far the target is ahead of the best other answer."""
        raise NotImplementedError

    def predicted(self, logits: Tensor) -> Tensor:
        """Per scored position: the model's answer (a token id, or a label), as integers."""
        raise NotImplementedError

    def kl(self, reference: Tensor | Any, logits: Tensor) -> Tensor:
        """KL(reference || current) over the scored outputs, averaged over them; `reference` the
        reference logits, or their `kl_reference` where several steps read the same ones."""
        raise NotImplementedError

    def kl_reference(self, reference: Tensor) -> Tensor | Any:
        """What `kl` reads of the reference logits, computed once (`len` is the outputs' count)."""
        return reference

    def smoothed_loss(self, logits: Tensor, targets: Tensor, eps: float, token_mean: bool = False) -> Tensor:
        """The published codes' label-smoothed loss (eps = 0: the plain loss); generation sums
        over the target tokens unless `token_mean`, classification averages over examples."""
        raise NotImplementedError

    def same_answer(self, answer: Any, target: Any) -> bool:
        raise NotImplementedError

    def new_answer(self, example: Example, pool: dict[str | None, list[Any]]) -> Any:
        """An answer other than the example's, fixed per example (not per process or epoch), to
        teach in a training edit: the data's alternative, else another object of its relation."""
        raise NotImplementedError


class Classification(Task):
    kind = CLASSIFICATION
    placeholder_target = 0

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets)

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        return (logits > 0).float() == targets

    def predicted(self, logits: Tensor) -> Tensor:
        return (logits > 0).long()

    def margin(self, logits: Tensor, targets: Tensor) -> Tensor:
        return logits * (2 * targets - 1)

    def kl(self, reference: Tensor, logits: Tensor) -> Tensor:
        ref = torch.stack([F.logsigmoid(-reference), F.logsigmoid(reference)], -1)
        cur = torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], -1)
        return F.kl_div(cur, ref, log_target=True, reduction="batchmean")

    def smoothed_loss(self, logits: Tensor, targets: Tensor, eps: float, token_mean: bool = False) -> Tensor:
        """BCE minus eps times the Bernoulli entropy, as BertBinary's smoothing (cls:486)."""
        bce = F.binary_cross_entropy_with_logits(logits, targets)
        if not eps:
            return bce
        return bce - eps * torch.distributions.Bernoulli(logits=logits).entropy().mean(-1)

    def same_answer(self, answer: Any, target: Any) -> bool:
        return int(answer) == int(target)

    def new_answer(self, example: Example, pool: dict[str | None, list[Any]]) -> Any:
        return 1 - int(example.target)


class Generation(Task):
    kind = GENERATION
    placeholder_target = "x"

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets)

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        return logits.argmax(-1) == targets

    def predicted(self, logits: Tensor) -> Tensor:
        return logits.argmax(-1)

    def margin(self, logits: Tensor, targets: Tensor) -> Tensor:
        target = logits.gather(1, targets[:, None]).squeeze(1)
        runner_up = logits.scatter(1, targets[:, None], float("-inf")).max(1).values
        return target - runner_up

    def kl(self, reference: Tensor | KLReference, logits: Tensor) -> Tensor:
        if not isinstance(reference, KLReference):
            reference = self.kl_reference(reference)
        return _KLToReference.apply(logits.float(), reference.logp, reference.probs, reference.mass)

    @torch.no_grad()
    def kl_reference(self, reference: Tensor) -> KLReference:
        reference = reference.float()  # log-probabilities through the same logsumexp as the current side's
        logp = reference - torch.logsumexp(reference, -1, keepdim=True)
        probs = logp.exp()
        # 0 log 0 = 0: where p is 0, log p may be -inf; any finite value gives its term 0
        return KLReference(logp.masked_fill(probs == 0, 0), probs, probs.sum(-1))

    def smoothed_loss(self, logits: Tensor, targets: Tensor, eps: float, token_mean: bool = False) -> Tensor:
        """The published label-smoothed NLL (utils.py:122-139), summed over the tokens."""
        lprobs = logits.float().log_softmax(-1)
        nll = -lprobs.gather(-1, targets[:, None]).sum()
        smooth = -lprobs.sum()
        eps_i = eps / (lprobs.size(-1) - 1)
        total = (1.0 - eps - eps_i) * nll + eps_i * smooth
        return total / len(targets) if token_mean else total

    def same_answer(self, answer: Any, target: Any) -> bool:
        return normalize_answer(answer) == normalize_answer(target)

    def new_answer(self, example: Example, pool: dict[str | None, list[Any]]) -> Any:
        if example.alternative not in (None, example.target):
            return example.alternative
        choices = [t for t in pool.get(example.relation, []) if t != example.target]
        if not choices:
            choices = [t for ts in pool.values() for t in ts if t != example.target]
        return random.Random(zlib.crc32(example.uid.encode())).choice(sorted(set(choices), key=str))


def normalize_answer(text: Any) -> str:
    """Generated and reference answers compare case- and whitespace-insensitively."""
    return " ".join(str(text).lower().split())


TASKS: dict[str, Task] = {CLASSIFICATION: Classification(), GENERATION: Generation()}
