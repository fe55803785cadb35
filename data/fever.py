"""FEVER fact-checking from the KILT files (T-Patcher App. A): SUPPORTS -> 1, REFUTES -> 0.

Two layouts in data.path (`data.layout`, auto-detected):

* kilt: the KILT train file is split 0.8 / 0.1 / 0.1 into D'train / D_val / D_edit by seed;
* tpatcher: T-Patcher's repository cut the KILT train file once, with an unseeded shuffle, into
  fever-{train,val,edit}.jsonl (the same KILT records; src/dataset/fever_dataloader.py:163-198 at
  fec629a); those files are the splits, used as they are, so a run edits the published code's
  D_edit. As its `FeverEditData` (fever_dataloader.py:84-91) does, only edit records with
  `rephrases` are edited (the others are counted as dropped), and the equivalents are the
  `rephrases` it reads.

KILT dev is D_test in both. A record whose outputs disagree, or whose label is neither, is dropped
(and counted). Equivalents (kilt): `filtered_rephrases` / `rephrases` where the file has them,
else back-translation.
"""

from __future__ import annotations

from benchmark.types import CLASSIFICATION, DataError, Example
from data.base import EditDataModule
from data.configs.fever import TPATCHER_FILES, FeverConfig  # noqa: F401  (its config, torch-free)
from data.io import field as get
from data.io import find_file, kilt_answers, read_jsonl, strings

LABELS = {"SUPPORTS": 1, "REFUTES": 0}


class FeverDataModule(EditDataModule):
    task = CLASSIFICATION
    config_class = FeverConfig
    layout = "kilt"

    def _read(self, name: str, rephrases: tuple[str, ...] = ("filtered_rephrases", "rephrases")) -> list[Example]:
        path = find_file(self.config.path, [name], "fever")
        if path is None:
            raise DataError(f"{self.config.path}/{name}: file not found")
        out = []
        for n, (where, record) in enumerate(read_jsonl(path)):
            if self.config.max_records and n >= self.config.max_records:
                break
            self.records_read += 1
            claim = get(record, "input", where, str)
            answers = set(kilt_answers(record, where))
            if len(answers) != 1:
                self.dropped["several different labels" if answers else "no label"] += 1
                continue
            label = answers.pop()
            if label not in LABELS:
                self.dropped[f"label {label}"] += 1
                continue
            named = next((k for k in rephrases if record.get(k)), None)
            equivalents = strings(record[named], named, where) if named else []
            uid = str(record.get("id", where))
            out.append(Example(uid=uid, prompt=claim, target=LABELS[label], equivalents=list(equivalents)))
        return out

    def _layout(self) -> str:
        cfg = self.config
        if cfg.layout != "auto":
            return cfg.layout
        for layout, name in (("kilt", cfg.train_file), ("tpatcher", TPATCHER_FILES[0])):
            if find_file(cfg.path, [name], "fever") is not None:
                return layout
        raise DataError(f"{cfg.path}: no FEVER file found (looked for {cfg.train_file}, or T-Patcher's "
                        f"{', '.join(TPATCHER_FILES)})")

    def read_examples(self):
        cfg = self.config
        self.layout, self.given = self._layout(), None
        self.notices.append(f"layout: {self.layout}, {'detected' if cfg.layout == 'auto' else 'given'}")
        if self.layout == "kilt":
            if cfg.layout == "auto" and find_file(cfg.path, [TPATCHER_FILES[2]], "fever") is not None:
                self.notices.append(f"T-Patcher's split files are here too: data.layout=tpatcher edits its "
                                    f"published D_edit ({TPATCHER_FILES[2]}) instead of a split of {cfg.train_file}")
            return self._read(cfg.train_file), self._read(cfg.dev_file)
        missing = [name for name in TPATCHER_FILES if find_file(cfg.path, [name], "fever") is None]
        if missing:
            raise DataError(f"{cfg.path}: T-Patcher's FEVER layout lacks {', '.join(missing)}")
        train, val, edit = (self._read(name, ("rephrases",)) for name in TPATCHER_FILES)
        unrephrased = sum(not e.equivalents for e in edit)
        if unrephrased:
            self.dropped["edit record without rephrases (T-Patcher edits only those with)"] += unrephrased
        self.given = [train, val, [e for e in edit if e.equivalents]]
        return train + val + edit, self._read(cfg.dev_file)
