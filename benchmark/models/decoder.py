"""Decoder-only LMs (GPT-2, LLaMA family): prompt, then greedy continuation.

Correctness is exact match of the greedy continuation on the target's tokens. It is computed in
one teacher-forced pass: greedy decoding reproduces the target's first k tokens exactly when the
argmax at each of those k positions, given the target prefix, is the target token. So "every
scored argmax is right" *is* the exact-match test, not an approximation of it, and it batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.models.base import EncodedBatch, FFNSite, ModelAdapter, project
from benchmark.models.task import TASKS
from benchmark.types import GENERATION

# model_type -> where things are. The only place that names a decoder's modules.
LAYOUTS: dict[str, dict[str, Any]] = {
    "llama": dict(layers="model.layers", in_proj="mlp.gate_proj", out_proj="mlp.down_proj", up_proj="mlp.up_proj",
                  pre_ffn_norm="post_attention_layernorm", final_norm="model.norm", gated=True,
                  attention=dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                                 o="self_attn.o_proj")),
    "gpt2": dict(layers="transformer.h", in_proj="mlp.c_fc", out_proj="mlp.c_proj",
                 pre_ffn_norm="ln_2", final_norm="transformer.ln_f", gated=False,
                 attention=dict(qkv="attn.c_attn", o="attn.c_proj")),
}
for _alias in ("mistral", "qwen2", "qwen3", "smollm3"):
    LAYOUTS[_alias] = LAYOUTS["llama"]


def _act_name(config: Any) -> str:
    name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", "gelu")
    return "silu" if name in ("silu", "swish") else "relu" if name == "relu" else "gelu"


class DecoderLMAdapter(ModelAdapter):
    family = "decoder"
    task = TASKS[GENERATION]
    replays_blocks = True
    reruns_from_positions = True  # causal: `kept_positions` may rerun the blocks from a position on

    def __init__(self, model, tokenizer, config):
        super().__init__(model, tokenizer, config)
        model_type = model.config.model_type
        if model_type not in LAYOUTS:
            raise ValueError(f"decoder model_type {model_type!r} has no layout; known: {', '.join(sorted(LAYOUTS))}")
        self.layout = LAYOUTS[model_type]
        self.attention = self.layout["attention"]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # prompts longer than the model's window lose their start (the end leads to the answer)
        self.window = getattr(model.config, "max_position_embeddings", None) or 2048
        self.truncated_prompts: set[int] = set()  # hashes of the prompts cut

    def layer_modules(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layout["layers"])

    def ffn_site(self, layer: int = -1) -> FFNSite:
        names = [self.layout[k] for k in ("in_proj", "out_proj", "up_proj") if k in self.layout]
        return self._site(layer, lambda b: tuple(b.get_submodule(n) for n in names), _act_name(self.model.config),
                          self.layout["gated"], self.model.config.hidden_size)

    def _residual_site(self, layer: int) -> tuple[nn.Module, int]:
        # Pre-LN block: h + FFN(norm(h)); the norm's input is the residual.
        return self.layer_modules()[layer].get_submodule(self.layout["pre_ffn_norm"]), 0

    def block_output(self, layer: int, ffn_out: Tensor, residual: Tensor) -> Tensor:
        return residual + ffn_out

    def head(self, hidden: Tensor) -> Tensor:
        hidden = self.model.get_submodule(self.layout["final_norm"])(hidden)
        return project(hidden, self.model.get_output_embeddings())

    def encode(self, prompts: list[str], targets: list[Any]) -> EncodedBatch:
        tok = self.tokenizer
        rows, spans = [], []
        for prompt, target in zip(prompts, targets):
            p = tok(prompt, add_special_tokens=True)["input_ids"]
            t = tok(str(target), add_special_tokens=False)["input_ids"]
            if not t:
                raise ValueError(f"target {target!r} of prompt {prompt!r} tokenizes to nothing")
            if len(p) + len(t) > self.window:
                keep = max(self.window - len(t) - 1, 1)
                p = p[:1] + p[-keep:]  # the first token (BOS where the tokenizer adds one), then the end
                self.truncated_prompts.add(hash(prompt))
            rows.append(p + t)
            spans.append((len(p) - 1, len(p) - 1 + len(t)))  # positions that predict the target
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        valid = torch.zeros_like(ids, dtype=torch.bool)
        score = torch.zeros_like(valid)
        targets_out, owner = [], []
        for i, (row, (lo, hi)) in enumerate(zip(rows, spans)):
            ids[i, : len(row)] = torch.tensor(row)
            valid[i, : len(row)] = True
            score[i, lo:hi] = True
            targets_out += row[lo + 1 : hi + 1]
            owner += [i] * (hi - lo)
        dev = self.device
        return EncodedBatch(
            inputs={"input_ids": ids.to(dev), "attention_mask": valid.long().to(dev)},
            score_mask=score.to(dev),
            targets=torch.tensor(targets_out, device=dev),
            owner=torch.tensor(owner, device=dev),
            size=len(rows),
            valid_mask=valid.to(dev),
        )

    def _forward_scored(self, batch: EncodedBatch) -> Tensor:
        # Run the head on the scored positions only: the vocabulary projection dominates the cost.
        hidden = self.model.base_model(**batch.inputs, use_cache=False).last_hidden_state
        return self.model.get_output_embeddings()(hidden[batch.score_mask])

    def _scored_after_blocks(self, hidden: Tensor, batch: EncodedBatch) -> Tensor:
        # the base model's final norm after its last block (LLaMA's norm, GPT-2's ln_f), then as above
        hidden = self.model.get_submodule(self.layout["final_norm"])(hidden)
        return self.model.get_output_embeddings()(hidden[batch.score_mask])

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 8) -> list[str]:
        tok = self.tokenizer
        out = []
        for prompt in prompts:  # one at a time: no left-padding subtleties for greedy decoding
            ids = tok(prompt, return_tensors="pt").to(self.device)
            gen = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
            out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return out
