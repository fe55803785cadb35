"""FEVER fact-checking from the KILT files (T-Patcher App. A): SUPPORTS -> 1, REFUTES -> 0.

The KILT train file is split 0.8 / 0.1 / 0.1 into D'train / D_val / D_edit by seed; KILT dev is
D_test. A record whose outputs disagree, or whose label is neither, is dropped (and counted).
Equivalents: `rephrases` / `filtered_rephrases` where the file has them, else back-translation.
"""

from __future__ import annotations

from benchmark.types import CLASSIFICATION, DataError, Example
from data.base import EditDataModule
from data.configs.fever import FeverConfig  # noqa: F401  (its config, torch-free)
from data.io import field as get
from data.io import find_file, read_jsonl

LABELS = {"SUPPORTS": 1, "REFUTES": 0}


class FeverDataModule(EditDataModule):
    task = CLASSIFICATION
    config_class = FeverConfig

    def _read(self, name: str) -> list[Example]:
        path = find_file(self.config.path, [name], "fever")
        if path is None:
            raise DataError(f"{self.config.path}/{name}: file not found")
        out = []
        for n, (where, record) in enumerate(read_jsonl(path)):
            if self.config.max_records and n >= self.config.max_records:
                break
            self.records_read += 1
            claim = get(record, "input", where, str)
            answers = {get(o, "answer", where, str) for o in get(record, "output", where, list)}
            if len(answers) != 1:
                self.dropped["several different labels"] += 1
                continue
            label = answers.pop()
            if label not in LABELS:
                self.dropped[f"label {label}"] += 1
                continue
            rephrases = record.get("filtered_rephrases") or record.get("rephrases") or []
            uid = str(record.get("id", where))
            out.append(Example(uid=uid, prompt=claim, target=LABELS[label], equivalents=list(rephrases)))
        return out

    def read_examples(self):
        return self._read(self.config.train_file), self._read(self.config.dev_file)
