"""Encoder classifiers (BERT-like encoder + one-logit head on [CLS]), as in the FEVER setting:
the prediction is the sign of the logit, the loss binary cross-entropy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.models.base import EncodedBatch, FFNSite, ModelAdapter
from benchmark.models.task import TASKS
from benchmark.types import CLASSIFICATION


class BertLayout:
    """Where a BERT/RoBERTa encoder keeps its blocks, last FFN and residual, and what follows a
    block's FFN (residual add, LayerNorm; after the last block the family's `_head`): shared by the classifier and the
    masked-LM adapters."""

    model: nn.Module
    attention = dict(q="attention.self.query", k="attention.self.key", v="attention.self.value",
                     o="attention.output.dense")

    def layer_modules(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def ffn_site(self, layer: int = -1) -> FFNSite:
        act = "relu" if self.model.config.hidden_act == "relu" else "gelu"
        return self._site(layer, lambda b: (b.intermediate.dense, b.output.dense), act, False,
                          self.model.config.hidden_size)

    def _residual_site(self, layer: int) -> tuple[nn.Module, int]:
        return self.layer_modules()[layer].output, 1  # BertOutput(hidden_states, input_tensor)

    def block_output(self, layer: int, ffn_out: Tensor, residual: Tensor) -> Tensor:
        out = self.layer_modules()[layer].output
        return out.LayerNorm(out.dropout(ffn_out) + residual)

    def head(self, hidden: Tensor) -> Tensor:
        return self._head(hidden)


class EncoderClassifierAdapter(BertLayout, ModelAdapter):
    family = "classifier"
    task = TASKS[CLASSIFICATION]
    replays_blocks = True

    def __init__(self, model, tokenizer, config):
        super().__init__(model, tokenizer, config)
        if model.config.model_type not in ("bert", "roberta"):
            raise ValueError(f"encoder classifier supports bert/roberta, got {model.config.model_type!r}")
        if model.config.num_labels != 1:
            raise ValueError("encoder classifier needs a one-logit head (num_labels=1)")
        self.encoder = model.base_model

    def _head(self, cls_state: Tensor) -> Tensor:
        # BertForSequenceClassification / RobertaForSequenceClassification heads on [CLS].
        if self.model.config.model_type == "bert":
            pooled = self.encoder.pooler.activation(self.encoder.pooler.dense(cls_state))
            return self.model.classifier(self.model.dropout(pooled)).squeeze(-1)
        return self.model.classifier(cls_state[:, None, :]).squeeze(-1)

    def encode(self, prompts: list[str], targets: list[Any]) -> EncodedBatch:
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        mask = enc["attention_mask"].bool()
        score = torch.zeros_like(mask)
        score[:, 0] = True  # [CLS]
        dev = self.device
        n = len(prompts)
        return EncodedBatch(
            inputs={k: v.to(dev) for k, v in enc.items()},
            score_mask=score.to(dev),
            targets=torch.tensor([float(t) for t in targets], device=dev),
            owner=torch.arange(n, device=dev),
            size=n,
            valid_mask=mask.to(dev),
        )

    def _forward_scored(self, batch: EncodedBatch) -> Tensor:
        return self.model(**batch.inputs).logits.squeeze(-1)

    def _scored_after_blocks(self, hidden: Tensor, batch: EncodedBatch) -> Tensor:
        # What *ForSequenceClassification does with the encoder's output: BERT pools [CLS]
        # (BertPooler reads hidden[:, 0]), drops out and classifies; RoBERTa's head reads [CLS] itself.
        if self.model.config.model_type == "bert":
            return self.model.classifier(self.model.dropout(self.encoder.pooler(hidden))).squeeze(-1)
        return self.model.classifier(hidden).squeeze(-1)
