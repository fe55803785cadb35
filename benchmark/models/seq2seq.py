"""Seq2seq models (BART): the answer is the decoder's greedy output, compared with the target
after lower-casing and stripping. The last FFN is the last *decoder* layer's."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.models.base import EncodedBatch, FFNSite, ModelAdapter, project
from benchmark.models.task import TASKS, normalize_answer
from benchmark.types import GENERATION


class Seq2SeqAdapter(ModelAdapter):
    family = "seq2seq"
    task = TASKS[GENERATION]
    attention = dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj")

    def __init__(self, model, tokenizer, config):
        super().__init__(model, tokenizer, config)
        if model.config.model_type not in ("bart", "mbart"):
            raise ValueError(f"seq2seq supports bart/mbart layouts, got {model.config.model_type!r}")

    def layer_modules(self) -> nn.ModuleList:
        return self.model.get_decoder().layers

    def ffn_site(self, layer: int = -1) -> FFNSite:
        act = "relu" if self.model.config.activation_function == "relu" else "gelu"
        return self._site(layer, lambda b: (b.fc1, b.fc2), act, False, self.model.config.d_model)

    @property
    def _pre_ln(self) -> bool:
        return self.model.config.model_type == "mbart"  # mBART normalises before the FFN, BART after

    def _residual_site(self, layer: int) -> tuple[nn.Module, int]:
        block = self.layer_modules()[layer]
        # post-LN (BART): the residual is q itself; pre-LN (mBART): the input of the FFN's norm
        return (block.final_layer_norm if self._pre_ln else block.fc1), 0

    def block_output(self, layer: int, ffn_out: Tensor, residual: Tensor) -> Tensor:
        if self._pre_ln:
            return residual + ffn_out
        return self.layer_modules()[layer].final_layer_norm(residual + ffn_out)

    def head(self, hidden: Tensor) -> Tensor:
        decoder = self.model.get_decoder()
        if getattr(decoder, "layer_norm", None) is not None:  # mBART's final decoder norm
            hidden = decoder.layer_norm(hidden)
        return project(hidden, self.model.lm_head) + self.model.final_logits_bias

    def encode(self, prompts: list[str], targets: list[Any]) -> EncodedBatch:
        tok = self.tokenizer
        enc = tok(prompts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        labels = tok(text_target=[str(t) for t in targets], padding=True, return_tensors="pt")
        label_ids, label_mask = labels["input_ids"], labels["attention_mask"].bool()
        # BART tokenizers wrap targets in <s> ... </s>; the decoder starts from </s> and predicts
        # <s> first, exactly as in pre-training, so every label token is scored.
        start = torch.full((len(prompts), 1), self.model.config.decoder_start_token_id)
        dec_in = torch.cat([start, label_ids[:, :-1]], dim=1).masked_fill(
            torch.cat([torch.ones_like(start, dtype=torch.bool), label_mask[:, :-1]], 1).logical_not(),
            tok.pad_token_id,
        )
        dev = self.device
        owner = torch.arange(len(prompts))[:, None].expand_as(label_ids)[label_mask]
        return EncodedBatch(
            inputs={
                "input_ids": enc["input_ids"].to(dev),
                "attention_mask": enc["attention_mask"].to(dev),
                "decoder_input_ids": dec_in.to(dev),
                "decoder_attention_mask": label_mask.long().to(dev),
            },
            score_mask=label_mask.to(dev),
            targets=label_ids[label_mask].to(dev),
            owner=owner.to(dev),
            size=len(prompts),
            valid_mask=label_mask.to(dev),
        )

    def _forward_scored(self, batch: EncodedBatch) -> Tensor:
        return self.model(**batch.inputs, use_cache=False).logits[batch.score_mask]

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        gen = self.model.generate(**enc.to(self.device), max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
        return self.tokenizer.batch_decode(gen, skip_special_tokens=True)

    @property
    def scores_by_generation(self) -> bool:
        return self.config.metric == "exact_match"

    @torch.no_grad()
    def scores(self, prompts: list[str], targets: list[Any]) -> list[float]:
        if self.config.metric == "token_accuracy":
            return super().scores(prompts, targets)
        out: list[float] = []
        step = self.config.eval_batch_size
        for i in range(0, len(prompts), step):
            texts = self.generate(prompts[i : i + step])
            out += [float(normalize_answer(p) == normalize_answer(t)) for p, t in zip(texts, targets[i : i + step])]
        return out

    def score_and_queries(self, prompt: str, target: Any, layer: int = -1) -> tuple[float, Tensor]:
        if self.config.metric == "token_accuracy":
            return super().score_and_queries(prompt, target, layer)
        # the score is a generation, not the teacher-forced forward that holds the queries
        queries = self.memory_queries(self.encode([prompt], [target]), layer).float()
        return self.scores([prompt], [target])[0], queries
