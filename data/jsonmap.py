"""`json`: any JSON/JSONL edit dataset whose field names are mapped in YAML, so a new dataset in
a similar shape needs only a config file, e.g.

    data:
      name: json
      path: my_edits.jsonl
      fields: {prompt: question, target: answer.text, equivalents: paraphrases,
               locality_prompt: loc, locality_answer: loc_ans, relation: rel}

Dotted paths reach into nested objects and lists ("output.0.answer"). A field given as a list
of strings may also be a single string. With `task: classification`, `labels` maps the file's
label values to 0/1. A separate `test_path` is D_test; otherwise D_test is carved out.
"""

from __future__ import annotations

from benchmark.types import CLASSIFICATION, DataError, Example
from data.base import EditDataModule
from data.configs.jsonmap import KNOWN_FIELDS, JsonMapConfig  # noqa: F401  (its config, torch-free)
from data.io import field as get
from data.io import read_records


def _strings(value, where: str, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DataError(f"{where}: field '{name}' should be a string or a list of strings")


class JsonMapDataModule(EditDataModule):
    config_class = JsonMapConfig

    def __init__(self, config: JsonMapConfig):
        super().__init__(config)
        self.task = config.task

    def _read(self, path: str) -> list[Example]:
        return self._examples(read_records(path))  # a JSON array or JSONL, whatever the file is named

    def _examples(self, records) -> list[Example]:
        """Examples from (where, record) pairs through the configured field mapping."""
        cfg, fields = self.config, self.config.fields
        out = []
        for n, (where, record) in enumerate(records):
            if cfg.max_records and n >= cfg.max_records:
                break
            self.records_read += 1
            prompt = get(record, fields["prompt"], where, str)
            raw = get(record, fields["target"], where, (str, int, bool))
            if self.task == CLASSIFICATION:
                if str(raw) not in cfg.labels:
                    raise DataError(f"{where}: label {raw!r} of field '{fields['target']}' is not in data.labels")
                target = cfg.labels[str(raw)]
            elif not str(raw).strip():
                self.dropped["empty target (records)"] += 1
                continue
            else:
                target = cfg.target_prefix + str(raw).strip()
            equivalents = (_strings(get(record, fields["equivalents"], where), where, fields["equivalents"])
                           if "equivalents" in fields else [])
            locality = []
            if "locality_prompt" in fields:
                loc = get(record, fields["locality_prompt"], where, str)
                has_answer = "locality_answer" in fields
                answer = get(record, fields["locality_answer"], where, str) if has_answer else ""
                locality = [(loc, cfg.target_prefix + answer.strip())]
            relation = str(get(record, fields["relation"], where)) if "relation" in fields else None
            uid = str(get(record, fields["id"], where)) if "id" in fields else where
            out.append(Example(uid, prompt, target, equivalents, relation, locality=locality))
        return out

    def read_examples(self):
        if not self.config.path:
            raise DataError("json dataset: set data.path to its JSON or JSONL file")
        test = self._read(self.config.test_path) if self.config.test_path else None
        return self._read(self.config.path), test
