"""zsRE question answering, from any of its four published layouts (auto-detected in data.path):

* KILT `structured_zeroshot-{train,dev}-kilt.jsonl`: `input` "subject [SEP] relation", answers in
  `output[].answer`, questions in `meta.template_questions` (the first is the edit prompt, the
  others its equivalents);
* KE/MEND-annotated `structured_zeroshot-{train,dev}-new_annotated_final.jsonl`: `input` is the
  question, plus `alternatives`, `rephrases`, `filtered_rephrases`;
* MEND/ROME JSON `zsre_mend_{train,eval}*.json`: `src`, `rephrase`, `alt`, `answers`, `loc`,
  `loc_ans` (the NQ locality question, "nq question: " removed);
* T-Patcher's own files `zsre-{train,val,edit}.jsonl` + `zsre-dev-kilt.jsonl`: its repository
  cuts the KE-annotated files 0.9 / 0.075 / 0.025 once and writes `input`, `output` (a list of
  answer strings) and `rephrases`; the files are the splits, so they are used as they are.

Single-answer questions only; split 0.9 / 0.075 / 0.025 (but for T-Patcher's pre-split files);
the dev/eval file is D_test.
`target=gold` edits the model's mistakes on the true answer (T-Patcher); `target=modified`
teaches `alt` / `alternatives[0]`, or for KILT a frequency-sampled object of the same relation
(Zhu et al.; EasyEdit), and follows Zhu et al.'s protocol: each fact's questions are split into
training forms and held-out probes (two if it has more than three, none if one, else one), and
A_M / A_F\\S are read on the probes alone. Targets carry a leading space, as a continuation of the question.
"""

from __future__ import annotations

import random

from benchmark.types import GENERATION, DataError, EditSplits, Example, hold_out_probes
from data.base import EditDataModule
from data.configs.zsre import LAYOUTS, ZsreConfig  # noqa: F401  (its config, torch-free)
from data.io import field as get
from data.io import find_file, kilt_answers, read_json_array, read_jsonl, strings
from data.modify import ObjectSampler, modified

TPATCHER_SPLITS = ("zsre-val.jsonl", "zsre-edit.jsonl")  # D_val, D_edit beside zsre-train.jsonl


class ZsreDataModule(EditDataModule):
    task = GENERATION
    config_class = ZsreConfig
    version = 2  # 2: target=modified splits each fact's questions into training forms and probes
    download_name = "zsre/zsre_mend_eval.json"  # ROME's file: the eval file alone, edits only
    download_is_folder = True

    def _layout(self) -> tuple[str, list]:
        layouts = [self.config.layout] if self.config.layout != "auto" else list(LAYOUTS)
        for name in layouts:
            train = find_file(self.data_path, [LAYOUTS[name][0]], "zsre")
            if train is not None:
                return name, [train, find_file(self.data_path, [LAYOUTS[name][1]], "zsre")]
        if "mend" in layouts:  # the eval file alone, as ROME and EasyEdit users have it: edits only
            evaluation = find_file(self.data_path, [LAYOUTS["mend"][1]], "zsre")
            if evaluation is not None:
                return "mend", [evaluation]
        wanted = ", ".join(LAYOUTS[n][0] for n in layouts)
        raise DataError(f"{self.data_path}: no zsRE file found (looked for {wanted}, or {LAYOUTS['mend'][1]} alone)")

    def _parse(self, layout: str, where: str, record: dict) -> Example | None:
        if layout == "mend":
            answers = [a.strip() for a in strings(get(record, "answers", where, list), "answers", where)]
            prompt, rephrase = get(record, "src", where, str), record.get("rephrase")
            alt = str(record.get("alt") or "").strip()
            equivalents = [rephrase] if isinstance(rephrase, str) and rephrase.strip() else []
            relation, subject = None, record["subject"] if isinstance(record.get("subject"), str) else ""
            loc = get(record, "loc", where, str) if record.get("loc") is not None else ""
            loc_ans = record.get("loc_ans")
            locality = [(loc.removeprefix("nq question: ").strip(), " " + str(loc_ans).strip())] if loc else []
        else:
            given = kilt_answers(record, where)
            answers = sorted({a.strip() for a in given} - {""})  # the distinct answers
            if layout == "tpatcher" and len(given) != 1:
                # its Seq2SeqData drops a record unless `output` holds one answer, even one answer
                # given twice (src/dataset/zsre_dataloader.py:37 at fec629a)
                answers = []
            if layout == "kilt":
                subject, _, relation = get(record, "input", where, str).partition(" [SEP] ")
                questions = strings(get(record, "meta.template_questions", where, list), "meta.template_questions",
                                    where)
                if not questions:
                    raise DataError(f"{where}: field 'meta.template_questions' is empty")
                prompt, equivalents = questions[0], list(questions[1:])
                alt = ""
            else:
                prompt = get(record, "input", where, str)
                named = "filtered_rephrases" if record.get("filtered_rephrases") else "rephrases"
                equivalents = strings(record.get(named) or [], named, where)
                alternatives = strings(record.get("alternatives") or [], "alternatives", where)
                alt, relation = (alternatives[0].strip() if alternatives else ""), None
                subject = ""  # the other layout names no subject
            locality = []
        if len(answers) != 1:
            self.dropped["not exactly one answer"] += 1
            return None
        return Example(uid=str(record.get("id", where)), prompt=prompt.strip(), target=" " + answers[0],
                       equivalents=[e.strip() for e in equivalents if e.strip() and e.strip() != prompt.strip()],
                       relation=relation, alternative=alt or None, locality=locality,
                       subject=subject or None)

    def read_examples(self):
        layout, paths = self._layout()
        self.layout, self.given, self.edit_only = layout, None, len(paths) == 1
        self.notices.append(f"layout: {layout}{' (the eval file alone: edit records only)' if self.edit_only else ''}, "
                            f"{'detected' if self.config.layout == 'auto' else 'given'}: "
                            f"{', '.join(p.name for p in paths if p is not None)}")
        if layout == "tpatcher":
            extra = [find_file(self.data_path, [name], "zsre") for name in TPATCHER_SPLITS]
            missing = [name for name, path in zip(TPATCHER_SPLITS, extra) if path is None]
            if missing:
                raise DataError(f"{self.data_path}: T-Patcher's zsRE layout lacks {', '.join(missing)}")
            paths = [paths[0], *extra, paths[1]]
        reader = read_json_array if layout == "mend" else read_jsonl
        parts = []
        for path in paths:
            examples = []
            if path is not None:
                for n, (where, record) in enumerate(reader(path)):
                    if self.config.max_records and n >= self.config.max_records:
                        break
                    self.records_read += 1
                    example = self._parse(layout, where, record)
                    if example is not None:
                        examples.append(example)
            parts.append(examples)
        if layout == "tpatcher":  # D'train, D_val, D_edit as published
            self.given = parts[:3]
            return parts[0] + parts[1] + parts[2], parts[3] or None
        if self.edit_only:
            return parts[0], None
        return parts[0], parts[1] or None

    def make_splits(self, records, test) -> EditSplits:
        if self.edit_only:  # the NQ locality questions of unedited records are the facts to keep
            splits = self.edit_only_splits(records, str(self.data_path))
            if self.config.target == "modified":
                self._sampler = ObjectSampler([])
                rng = random.Random(self.config.seed + 2)
                for fold in splits.folds:
                    fold[:] = self._modify(fold, rng)
            return splits
        if self.config.target == "modified":  # Zhu et al.: questions split into training forms and probes
            rng = random.Random(self.config.seed + 5)
            records = [hold_out_probes(e, rng) for e in records]
            if self.given is not None:
                self.given = [[hold_out_probes(e, rng) for e in part] for part in self.given]
        if self.given is not None and test is None:
            raise DataError(f"{self.data_path}: T-Patcher's zsRE layout lacks zsre-dev-kilt.jsonl (D_test)")
        splits = super().make_splits(records, test)
        if self.config.target == "modified":
            self._sampler = ObjectSampler((e.relation, e.target.strip()) for e in splits.train if e.relation)
            rng = random.Random(self.config.seed + 2)
            for fold in splits.folds:
                fold[:] = self._modify(fold, rng)
            splits.unmodified = splits.train_subsample
        return splits

    def _modify(self, examples: list[Example], rng: random.Random) -> list[Example]:
        """The new object: the file's alternative, else a same-relation object by frequency."""
        def new_object(ex: Example) -> str | None:
            if ex.alternative is None and ex.relation:
                return self._sampler.sample(rng, ex.relation, ex.target.strip())
            return ex.alternative

        return modified(examples, new_object, self.dropped)

    def stream_examples(self, examples: list[Example]) -> list[Example]:
        if self.config.target != "modified":
            return examples
        return self._modify(examples, random.Random(self.config.seed + 4))
