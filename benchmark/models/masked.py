"""Masked LMs (BERT/RoBERTa with their MLM head) answering cloze prompts, as in Zhu et al.'s T-REx
and zsRE experiments with BERT.

A prompt holds the answer's place as `[MASK]` ("Dante was born in [MASK] ."); a prompt without it
is read with the answer at its end. The answer's tokens become that many mask tokens, and the
prediction is right when the argmax at every mask is the answer's token there (the usual LAMA
reading, extended to multi-token answers of known length). The last FFN is the last encoder
layer's, and everything after it (residual, LayerNorm, MLM head) is position-wise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from benchmark.models.base import EncodedBatch, ModelAdapter
from benchmark.models.encoder import BertLayout
from benchmark.models.task import TASKS
from benchmark.types import GENERATION

MASK = "[MASK]"


class MaskedLMAdapter(BertLayout, ModelAdapter):
    family = "masked"
    replays_blocks = True
    task = TASKS[GENERATION]

    def __init__(self, model, tokenizer, config):
        super().__init__(model, tokenizer, config)
        if model.config.model_type not in ("bert", "roberta"):
            raise ValueError(f"masked LM supports bert/roberta, got {model.config.model_type!r}")
        if tokenizer.mask_token_id is None:
            raise ValueError("masked LM needs a tokenizer with a mask token")
        # byte-level BPE keeps a word's leading space in its token; WordPiece ignores spaces
        self._spaced = tokenizer.tokenize(" a") != tokenizer.tokenize("a")
        empty = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [CLS] [SEP]
        self._open, self._close = empty[:1], empty[1:]

    def _head(self, hidden: Tensor) -> Tensor:
        return self.model.cls(hidden) if self.model.config.model_type == "bert" else self.model.lm_head(hidden)

    def _answer_ids(self, target: Any) -> list[int]:
        text = str(target).strip()
        ids = self.tokenizer(" " + text if self._spaced else text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to nothing")
        return ids

    def encode(self, prompts: list[str], targets: list[Any]) -> EncodedBatch:
        tok = self.tokenizer
        rows, spans, answers = [], [], []
        for prompt, target in zip(prompts, targets):
            left, _, right = prompt.partition(MASK) if MASK in prompt else (prompt, "", "")
            answer = self._answer_ids(target)
            # the tokenizer's own special tokens around the whole: [CLS] left <mask>*k right [SEP]
            wrapped = self._open + tok(left.rstrip(), add_special_tokens=False)["input_ids"] + \
                [tok.mask_token_id] * len(answer) + tok(right, add_special_tokens=False)["input_ids"] + self._close
            start = wrapped.index(tok.mask_token_id)
            rows.append(wrapped)
            spans.append((start, start + len(answer)))
            answers.append(answer)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        valid = torch.zeros_like(ids, dtype=torch.bool)
        score = torch.zeros_like(valid)
        for i, (row, (lo, hi)) in enumerate(zip(rows, spans)):
            ids[i, : len(row)] = torch.tensor(row)
            valid[i, : len(row)] = True
            score[i, lo:hi] = True
        dev = self.device
        return EncodedBatch(
            inputs={"input_ids": ids.to(dev), "attention_mask": valid.long().to(dev)},
            score_mask=score.to(dev),
            targets=torch.tensor([t for a in answers for t in a], device=dev),
            owner=torch.tensor([i for i, a in enumerate(answers) for _ in a], device=dev),
            size=len(rows),
            valid_mask=valid.to(dev),
        )

    def _forward_scored(self, batch: EncodedBatch) -> Tensor:
        hidden = self.model.base_model(**batch.inputs).last_hidden_state
        return self._head(hidden[batch.score_mask])

    def _scored_after_blocks(self, hidden: Tensor, batch: EncodedBatch) -> Tensor:
        return self._head(hidden[batch.score_mask])  # the base model adds nothing after its last block

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 1) -> list[str]:
        """The argmax filling of one mask at each prompt's answer place."""
        if max_new_tokens != 1:
            raise ValueError("masked LM generation fills one mask (max_new_tokens=1)")
        batch = self.encode(prompts, ["a"] * len(prompts))  # a one-token placeholder answer
        ids = self.scored_logits(batch).argmax(-1)
        return [self.tokenizer.decode([int(i)]) for i in ids]
