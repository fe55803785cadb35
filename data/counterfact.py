"""CounterFact (Meng et al. 2022, ROME): counterfactual edits with paraphrases and neighbourhood
prompts, in either published layout, told apart by the first record's fields:

* `rome` (kmeng01/rome `counterfact.json`, a JSON array): `requested_rewrite` with `prompt` (a
  template with `{}` for the subject), `subject`, `target_new.str`, `target_true.str`,
  `relation_id`; `paraphrase_prompts` and `neighborhood_prompts` (lists of strings);
* `easyedit` (EasyEdit's `counterfact-{train,edit}.json`): `prompt` (the subject filled in),
  `target_new`, `ground_truth`, `rephrase_prompt`, `locality_prompt`, `locality_ground_truth`.

Each record is one edit towards the new object: efficacy is SR, the paraphrases are GR's
equivalents, and the neighbourhood prompts with the *true* object (ROME scores a neighbourhood
prompt right when the true object still wins) are the locality pairs of Loc. The true object is
kept as `original_target`. The file holds edits only, so the splits are `edit_only_splits`: some
records are never edited and their neighbourhood facts are D'train (D_tr, memory) and D_test.
"""

from __future__ import annotations

from benchmark.types import GENERATION, DataError, EditSplits, Example
from data.base import EditDataModule
from data.configs.counterfact import LAYOUTS, CounterFactConfig  # noqa: F401  (its config, torch-free)
from data.io import field as get
from data.io import read_records


def _strings(value, where: str, name: str) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v.strip()]
    raise DataError(f"{where}: field '{name}' should be a string or a list of strings")


def _optional_subject(record: dict) -> str | None:
    return record["subject"] if isinstance(record.get("subject"), str) else None


def _answer(text: str) -> str:
    return " " + text.strip()


class CounterFactDataModule(EditDataModule):
    task = GENERATION
    config_class = CounterFactConfig

    def _rome(self, where: str, record: dict) -> Example:
        rewrite = get(record, "requested_rewrite", where, dict)
        template, subject = get(rewrite, "prompt", where, str), get(rewrite, "subject", where, str)
        if "{}" not in template:
            raise DataError(f"{where}: requested_rewrite.prompt has no '{{}}' for the subject")
        true = _answer(get(rewrite, "target_true.str", where, str))
        neighbours = _strings(record.get("neighborhood_prompts", []), where, "neighborhood_prompts")
        return Example(uid=str(record.get("case_id", where)), prompt=template.replace("{}", subject),
                       target=_answer(get(rewrite, "target_new.str", where, str)), original_target=true,
                       equivalents=_strings(record.get("paraphrase_prompts", []), where, "paraphrase_prompts"),
                       relation=rewrite.get("relation_id"), locality=[(p, true) for p in neighbours], subject=subject)

    def _easyedit(self, where: str, record: dict) -> Example:
        locality = []
        if record.get("locality_prompt"):
            locality = [(get(record, "locality_prompt", where, str),
                         _answer(get(record, "locality_ground_truth", where, str)))]
        truth = record.get("ground_truth")
        return Example(uid=str(record.get("case_id", where)), prompt=get(record, "prompt", where, str).strip(),
                       target=_answer(get(record, "target_new", where, str)),
                       original_target=_answer(truth) if isinstance(truth, str) else None,
                       equivalents=_strings(record.get("rephrase_prompt", []), where, "rephrase_prompt"),
                       locality=locality, subject=_optional_subject(record))

    download_name = "counterfact/counterfact.json"

    def read_examples(self):
        examples, self.layout = [], None
        for n, (where, record) in enumerate(read_records(self.data_path)):
            if self.config.max_records and n >= self.config.max_records:
                break
            self.records_read += 1
            if self.layout is None:
                self.layout = self._detect(where, record)
            example = (self._rome if self.layout == "rome" else self._easyedit)(where, record)
            if example.target.strip() == str(example.original_target or "").strip():
                self.dropped["records whose new object is the true one"] += 1
                continue
            examples.append(example)
        if self.layout is not None:
            self.notices.append(f"layout: {self.layout} ({'detected' if self.config.layout == 'auto' else 'given'})")
        return examples, None

    def _detect(self, where: str, record: dict) -> str:
        if self.config.layout != "auto":
            return self.config.layout
        if "requested_rewrite" in record:
            return "rome"
        if "prompt" in record and "target_new" in record:
            return "easyedit"
        raise DataError(f"{where}: neither CounterFact layout: expected 'requested_rewrite' (ROME) or "
                        "'prompt' and 'target_new' (EasyEdit)")

    def make_splits(self, records, test) -> EditSplits:
        return self.edit_only_splits(records, str(self.data_path))
