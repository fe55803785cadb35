r"""T-REx cloze facts from LAMA (Zhu et al. 2020, App. A): per-relation `P*.jsonl` files and
`relations.jsonl` with one template per relation ("[X] was born in [Y] .").

Zhu et al.'s roles: "we use the masked sentences and the objects from Wikipedia as the training
set, and the cloze-type question constructed from the templates as the test set". So each fact
is an Example whose training forms are its evidences (`evidences[].masked_sentence`): the first
is the edit prompt, the others `forms`; the relation template is its held-out probe (`probes`, and
the equivalents on which GR is read right after an edit). The initial fit trains on every
evidence; A_M and A_F\S are read on the templates only, which no editor is handed. Two forms
(`data.form`):

* `causal`: the text before the mask, the object as continuation; an evidence whose mask is not
  at the end (only punctuation after it) cannot be read by a left-to-right model and is left out
  (counted), and so is a fact whose template has the object before the end or that keeps no
  evidence;
* `masked`: the cloze sentences as they are, `[MASK]` anywhere, for masked LMs (the `masked`
  model family, e.g. `tiny-bert-mlm` or any BERT/RoBERTa MLM): every evidence is kept.

Knowledge modification: `modify` facts (32, 128, 512, ...) of D'train get a new object of the
same relation, drawn by its frequency in the training set and never the original; all their
evidences and their probe follow (same sentences, new answer). They form the edit stream. D_tr
(TrainR) is a sample of the unmodified facts, read on their evidence; its facts' templates are
D_test (TestR) and A_F\S's probes.
"""

from __future__ import annotations

import random
import re

from benchmark.types import GENERATION, DataError, EditSplits, Example
from data.base import EditDataModule, cut_folds
from data.configs.trex import TrexConfig  # noqa: F401  (its config, torch-free)
from data.io import field as get
from data.io import read_jsonl
from data.modify import ObjectSampler, modified

MASK = "[MASK]"
_TAIL = re.compile(r"^[\s.,;:!?'\")\]]*$")


def causal_prefix(masked: str) -> str | None:
    """The text before the mask when only punctuation follows it, else None."""
    before, sep, after = masked.partition(MASK)
    if not sep or MASK in after or not _TAIL.match(after) or not before.strip():
        return None
    return before.rstrip()


def cloze(masked: str) -> str | None:
    """The sentence itself when it holds exactly one mask, else None."""
    return masked.strip() if masked.count(MASK) == 1 else None


def _subject(record: dict) -> str | None:
    return record["sub_label"] if isinstance(record.get("sub_label"), str) else None


class TrexDataModule(EditDataModule):
    task = GENERATION
    config_class = TrexConfig
    version = 2  # 2: evidences are the training forms, the template the held-out probe (Zhu et al.)

    def _templates(self) -> dict[str, str]:
        from data.io import find_file

        path = find_file(self.config.path, ["relations.jsonl"], "trex")
        if path is None:
            raise DataError(f"{self.config.path}/relations.jsonl: file not found")
        return {get(r, "relation", w, str): get(r, "template", w, str) for w, r in read_jsonl(path)}

    def read_examples(self):
        from pathlib import Path

        templates = self._templates()
        files = sorted(Path(self.config.path).glob("P*.jsonl"))
        if self.config.relations:
            files = [f for f in files if f.stem in self.config.relations]
        if not files:
            raise DataError(f"{self.config.path}: no P*.jsonl relation file found")
        examples = []
        for path in files:
            for where, record in read_jsonl(path):
                self.records_read += 1
                relation = get(record, "predicate_id", where, str)
                if relation not in templates:
                    raise DataError(f"{where}: relation {relation} has no template in relations.jsonl")
                subject, obj = get(record, "sub_label", where, str), get(record, "obj_label", where, str)
                read = causal_prefix if self.config.form == "causal" else cloze
                probe = read(templates[relation].replace("[X]", subject).replace("[Y]", MASK))
                if probe is None:
                    self.dropped["facts whose template has the object not at the end" if read is causal_prefix
                                 else "facts whose template has not one [MASK]"] += 1
                    continue
                evidences = []
                for i, evidence in enumerate(get(record, "evidences", where, list)):
                    masked = get(evidence, "masked_sentence", f"{where} evidence {i}", str)
                    prefix = read(masked)
                    if prefix is None:
                        self.dropped["evidence sentences with the mask not at the end (masked-LM only)"
                                     if read is causal_prefix else "evidence sentences without exactly one [MASK]"] += 1
                    elif prefix not in evidences and prefix != probe:
                        evidences.append(prefix)
                if not evidences:
                    self.dropped["facts with no usable evidence sentence"] += 1
                    continue
                examples.append(Example(uid=str(record.get("uuid", where)), prompt=evidences[0], target=" " + obj,
                                        forms=evidences[1:], probes=[probe], equivalents=[probe],
                                        relation=relation, subject=_subject(record)))
        return examples, None

    def make_splits(self, records, test) -> EditSplits:
        """D'train holds every fact; `modify` of them, sampled by seed, form the edit stream."""
        cfg = self.config
        rng = random.Random(cfg.seed)
        order = list(range(len(records)))
        rng.shuffle(order)
        if cfg.modify >= len(records):
            raise DataError(f"data.modify={cfg.modify} but {cfg.path} gives {len(records)} facts; modify fewer, so "
                            "that unmodified facts remain for D_tr (A_F\\S, TrainR) and the memory")
        chosen = set(order[: cfg.modify])
        sampler = ObjectSampler((e.relation, e.target.strip()) for e in records)
        stream = modified([records[i] for i in sorted(chosen)],
                          lambda ex: sampler.sample(rng, ex.relation, ex.target.strip()), self.dropped)
        rest = [records[i] for i in order[cfg.modify :]]
        if not stream:
            raise DataError(f"{cfg.path}: no fact could be modified")
        folds = cut_folds(stream, self.fold_count(len(stream), "modified facts"))
        self.notices.append("no D_val: every T-REx fact is in D'train; an initial fit with init.keep=best_val "
                            "chooses its epoch on 64 D'train facts, and loop.split=val is not available")
        n_tr = self.d_tr_size(len(rest))
        subsample = rest[:n_tr]
        memory = self.memory_pool(rest[n_tr:], "facts, all the unmodified facts outside D_tr")
        probes = [Example(f"{e.uid}:probe", p, e.target, relation=e.relation) for e in subsample for p in e.probes]
        return EditSplits(task=self.task, train=records, val=[], folds=folds,
                          train_subsample=subsample, test=probes, pool=memory, unmodified=subsample)


    def check_model(self, family: str) -> None:
        if self.config.form == "masked" and family != "masked":
            raise DataError(f"data.form=masked writes cloze prompts with [MASK] for a masked LM; model family "
                            f"{family} would read the literal text; use data.form=causal")
