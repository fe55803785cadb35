"""The DataModule base every edit dataset derives from (its examples and splits are the shared
vocabulary of `benchmark.types`).

A dataset only turns its files into `Example`s (`read_examples`); the splitting into D'train,
D_val, D_edit folds, D_tr, D_test and the memory pool is shared here, so every dataset splits
the same way (T-Patcher App. A) and split sizes are reproducible from the seed alone.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any, ClassVar

import lightning as L
from torch.utils.data import DataLoader

from benchmark.types import GENERATION, DataError, EditSplits, Example, with_training_forms
from data.configs.base import DataConfig  # noqa: F401  (its config, torch-free)


def split_by_ratio(items: list, ratios: list[float], seed: int) -> list[list]:
    """Shuffle with `seed` and cut into len(ratios) parts; the last part takes the rounding."""
    items = list(items)
    random.Random(seed).shuffle(items)
    cuts, start = [], 0
    for ratio in ratios[:-1]:
        end = start + round(ratio * len(items))
        cuts.append(items[start:end])
        start = end
    cuts.append(items[start:])
    return cuts


def cut_folds(items: list, n: int) -> list[list]:
    """n contiguous folds whose sizes differ by at most one."""
    size, extra = divmod(len(items), n)
    folds, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        folds.append(items[start:end])
        start = end
    return folds


def _as_list(batch: list) -> list:
    return batch


class EditDataModule(L.LightningDataModule):
    """Base DataModule: subclasses implement `read_examples` and may override `make_splits`."""

    task: ClassVar[str] = GENERATION
    config_class: ClassVar[type] = DataConfig
    version: ClassVar[int] = 1  # bump when the same files and settings give other examples (new initial models)
    # D'train, D_val, D_edit where the dataset is published pre-split (set by `read_examples`, whose
    # records are then their concatenation, so that the cleaning sees every split)
    given: list[list[Example]] | None = None

    def __init__(self, config: DataConfig):
        super().__init__()
        self.config = config
        self.splits: EditSplits | None = None
        self.dropped: Counter = Counter()  # reason -> records dropped, for `seqedit data stats`
        self.records_read = 0
        self.notices: list[str] = []  # one-line facts a user should see (where equivalents came from)
        self._fetched: str | None = None  # where the published file was fetched to (`data_path`)

    # where a dataset's published file is fetched when data.path is not given (`data.url`); the file
    # itself is the data path, or (`download_is_folder`) the folder it is fetched into
    download_name: ClassVar[str | None] = None
    download_is_folder: ClassVar[bool] = False

    @property
    def data_path(self) -> str | None:
        """`data.path`, or the published file fetched from `data.url` on first use, cached."""
        if self.config.path or not self.download_name:
            return self.config.path
        if self._fetched is None:
            from data.download import fetch

            path = fetch(self.config.url, self.download_name, self.config.sha256)
            self._fetched = str(path.parent if self.download_is_folder else path)
            self.notices.append(f"data.path not set: {self.config.url} (cached as {path})")
        return self._fetched

    # -- to implement ------------------------------------------------------------------------
    def read_examples(self) -> tuple[list[Example], list[Example] | None]:
        """Return (training records, separate test records or None)."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            records, test = self._clean(*self.read_examples())
            if self.given is not None:  # what the cleaning dropped leaves the published splits too
                kept = {id(e) for e in records}
                self.given = [[e for e in part if id(e) in kept] for part in self.given]
            self.splits = self.make_splits(records, test)

    def _clean(self, records: list[Example], test: list[Example] | None):
        """Records with an empty target are dropped; a (prompt, target) pair counts once: repeats
        are dropped before splitting, and a test record that is also a training record is dropped
        from the test file, so no example is in two splits (it would be trained on, edited and
        scored at once)."""
        seen: set[tuple[str, ...]] = set()
        kept = self._keep_new(records, seen, "duplicate (prompt, target) (records)")
        if test is not None:
            test = self._keep_new(test, seen, "test record repeating another record (records)")
        return kept, test

    def _keep_new(self, examples: list[Example], seen: set[tuple[str, ...]], repeated: str) -> list[Example]:
        """The examples whose target is not empty and whose (prompt, target) is not in `seen` (which
        grows); the others are counted under their reason."""
        kept = []
        for e in examples:
            key = (e.prompt, str(e.target), *e.probes)  # two facts may share an evidence sentence, not a probe
            if isinstance(e.target, str) and not e.target.strip():
                self.dropped["empty target (records)"] += 1
            elif key in seen:
                self.dropped[repeated] += 1
            else:
                seen.add(key)
                kept.append(e)
        return kept

    def make_splits(self, records: list[Example], test: list[Example] | None) -> EditSplits:
        cfg = self.config
        if self.given is not None:  # published pre-split: its files are D'train, D_val, D_edit
            if test is None:
                raise DataError(f"{cfg.path}: the published split files come without a test file")
            return self.assemble(*self.given, test)
        if test is None:  # no published test split: D_test takes test_fraction first
            test, records = split_by_ratio(records, [cfg.test_fraction, 1 - cfg.test_fraction], cfg.seed + 3)
        train, val, edit = split_by_ratio(records, cfg.split_ratios, cfg.seed)
        return self.assemble(train, val, edit, test)

    def assemble(self, train: list[Example], val: list[Example], edit: list[Example],
                 test: list[Example]) -> EditSplits:
        """The splits from D'train, D_val, D_edit and D_test, however they were cut (by ratio
        here, or by the files of a dataset published pre-split): D_tr, memory, folds, equivalents."""
        cfg = self.config
        for name, part in (("D'train", train), ("D_edit", edit), ("D_test", test)):
            if not part:
                raise DataError(f"{type(self).__name__}: split {name} is empty ({self.records_read} records read)")
        back_translation = getattr(cfg, "back_translation", None)
        if back_translation is not None:  # only edit examples need equivalents (GR)
            from data.backtranslate import add_equivalents

            self.notices.append(add_equivalents(edit, back_translation, cfg.name or type(self).__name__))
        rng = random.Random(cfg.seed + 1)
        order = list(range(len(train)))
        rng.shuffle(order)
        n_tr = self.d_tr_size(len(train))
        tr_idx, rest = order[:n_tr], order[n_tr:]
        memory = self.memory_pool([train[i] for i in rest], "examples, all of D'train outside D_tr")
        return EditSplits(
            task=self.task,
            train=train,
            val=val,
            folds=cut_folds(edit, self.fold_count(len(edit), "D_edit examples")),
            train_subsample=[train[i] for i in tr_idx],
            test=test,
            pool=memory,
        )

    def memory_pool(self, candidates: list[Example], what: str) -> list[Example]:
        """The first `memory_size` candidates; a pool smaller than asked is said in the notices."""
        size = self.config.pool_size
        if len(candidates) < size and not self._default("pool_size"):  # a default asks for all there is: no notice
            self.notices.append(f"memory pool: {len(candidates)} {what} (data.pool_size={size} asks for more)")
        return candidates[:size]

    def d_tr_size(self, available: int) -> int:
        """data.train_subsample, or half of what there is where it asks for all of it: the other
        half is the memory pool, which an editor's memory loss or KL needs (a notice where the size was given)."""
        asked = self.config.train_subsample
        if asked < available or available < 2:
            return min(asked, available)
        if not self._default("train_subsample"):  # the default's halving is documented; a given size is told
            self.notices.append(f"D_tr: {available // 2} of {available} D'train facts (data.train_subsample="
                                f"{asked} asks for all of them; the other half is the memory pool)")
        return available // 2

    def _default(self, name: str) -> bool:
        """Whether a setting holds its dataclass default (a size no user asked for)."""
        return getattr(self.config, name) == type(self.config).__dataclass_fields__[name].default

    def edit_only_splits(self, records: list[Example], source: str) -> EditSplits:
        """Splits from a file of edit records alone, for a pre-trained model: `background_fraction`
        of the records are never edited; their locality pairs, facts the model should keep, are
        D'train (D_tr and the memory pool) and D_test (`test_fraction`); the other records are
        D_val (the `split_ratios` D_val share of them) and D_edit. So no fact an editor may read
        (the memory, D_val) is one on which Loc, TrainR or TestR is measured."""
        cfg = self.config
        if cfg.background != "locality":
            facts, edits = self._background_facts(), records
            origin = f"all {len(records)} records are edits; data.background={cfg.background} gives"
        else:
            background, edits = split_by_ratio(records, [cfg.background_fraction, 1 - cfg.background_fraction],
                                               cfg.seed)
            facts = [Example(f"{e.uid}:loc{i}", p, a, relation=e.relation)
                     for e in background for i, (p, a) in enumerate(e.locality)]
            origin = (f"{len(edits)} of {len(records)} records are edits; the locality prompts of the other "
                      f"{len(background)} give")
        if not facts:
            raise DataError(f"{source}: no facts to keep (D'train, D_test): the records have no locality prompts "
                            "and data.background is locality; set data.background=facts or a file")
        test, train = split_by_ratio(facts, [cfg.test_fraction, 1 - cfg.test_fraction], cfg.seed + 3)
        val_share = cfg.split_ratios[1] / max(1e-9, cfg.split_ratios[1] + cfg.split_ratios[2])
        val, edit = split_by_ratio(edits, [val_share, 1 - val_share], cfg.seed + 6)
        self.notices.append(f"edit-only file {source}: {origin} {len(facts)} facts: D'train {len(train)} (D_tr, "
                            f"memory), D_test {len(test)}; the edits: D_val {len(val)}, D_edit {len(edit)}")
        return self.assemble(train, val, edit, test)

    def _background_facts(self) -> list[Example]:
        """data.background=facts (the embedded facts, QA form) or a JSON/JSONL file of records with
        `prompt` and `target` (errors name file and line)."""
        if self.config.background == "facts":
            from benchmark.fact_source import TEMPLATES, raw_facts

            return [Example(f"{r}:{s}", TEMPLATES[r][0][0].format(s=s), " " + o, relation=r) for r, s, o in raw_facts()]
        from data.io import field as get
        from data.io import read_records

        return [Example(f"background:{i}", get(rec, "prompt", where, str), " " + get(rec, "target", where, str).strip())
                for i, (where, rec) in enumerate(read_records(self.config.background))]

    def fold_count(self, available: int, what: str) -> int:
        """data.num_folds, checked against how many examples there are to cut into folds."""
        asked = self.config.num_folds
        if asked is None:
            if available < 20:
                self.notices.append(f"{available} {what}: {available} folds of one example (data.num_folds unset; "
                                    "the paper's 20 needs 20)")
            return min(20, available)
        if asked > available:
            raise DataError(f"data.num_folds={asked} but there are only {available} {what}; "
                            f"use data.num_folds <= {available}")
        return asked

    def check_model(self, family: str) -> None:
        """Refuse a model family this data's prompts are not written for (one line)."""

    def stream_examples(self, examples: list[Example]) -> list[Example]:
        """Examples as a stream meets them: datasets that edit towards modified targets replace the
        target here (D_edit's in `make_splits`; D_val's for `val_stream`)."""
        return examples

    def val_stream(self) -> list[list[Example]]:
        """D_val cut into as many folds as D_edit (at most one example a fold), as a stream meets
        them: `loop.split=val`, for tuning an editor's settings without looking at D_edit/D_test.
        Copies, so the initial model's own D_val (best-epoch selection) is untouched."""
        self.setup()
        if not self.splits.val:
            raise DataError(f"loop.split=val: data {self.config.name or type(self).__name__} has no D_val to stream")
        copies = self.stream_examples([replace(e) for e in self.splits.val])
        return cut_folds(copies, min(len(self.splits.folds), len(copies)))

    def stats(self) -> dict[str, Any]:
        self.setup()
        assert self.splits is not None
        edits = [e for fold in self.splits.folds for e in fold]
        return {
            "dataset": type(self).__name__,
            "records_read": self.records_read,
            "splits": self.splits.sizes(),
            "fold_sizes": [len(f) for f in self.splits.folds],
            "mean_equivalents": sum(len(e.equivalents) for e in edits) / max(1, len(edits)),
            "dropped": dict(self.dropped),
            "notices": self.notices,
        }

    def _loader(self, examples: list[Example], batch_size: int = 32) -> DataLoader:
        return DataLoader(examples, batch_size=batch_size, collate_fn=_as_list)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(with_training_forms(self.splits.train))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.splits.val)
