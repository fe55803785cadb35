"""`hf`: any dataset Hugging Face `datasets` can read, with the field mapping of `json`.

`data.path` is a hub name (`user/dataset`, read with `load_dataset` where the hub is reachable or
its files are cached), a local folder of data files, one json/jsonl/csv/parquet file, or a folder
written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`. `data.split` picks the split read
as the records, `data.test_split` (optional) the one read as D_test. What `datasets` reads is
cached as Arrow files under the seqedit cache, so a second run reads it without parsing.
Fields are mapped as for `json` (`data.fields`, dotted paths into nested columns).
"""

from __future__ import annotations

from pathlib import Path

from benchmark.types import DataError
from data.configs.hf import HFConfig  # noqa: F401  (its config, torch-free)
from data.jsonmap import JsonMapDataModule

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _is_saved(folder: Path) -> bool:
    return (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists()


class HFDataModule(JsonMapDataModule):
    config_class = HFConfig

    def _load(self, split: str):
        try:
            import datasets
        except ImportError:
            raise DataError("data=hf needs the datasets package: pip install -e '.[hf]'") from None
        from benchmark.cache import cache_dir

        source, cache = Path(str(self.config.path)).expanduser(), str(cache_dir() / "hf")
        try:
            if source.is_dir() and _is_saved(source):
                loaded = datasets.load_from_disk(str(source))
                if isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise DataError(f"{source}: no split {split!r} (it has {', '.join(loaded)}); set data.split")
                    return loaded[split]
                return loaded
            if source.is_file():
                builder = BUILDERS.get(source.suffix)
                if builder is None:
                    raise DataError(f"{source}: data=hf reads {', '.join(BUILDERS)} files, a folder or a hub name")
                return datasets.load_dataset(builder, data_files={split: str(source)}, split=split, cache_dir=cache)
            # a hub dataset's own loading script is code from elsewhere: never run (datasets refuses it)
            return datasets.load_dataset(str(self.config.path), split=split, cache_dir=cache, trust_remote_code=False)
        except DataError:
            raise
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
            raise DataError(f"data=hf {self.config.path} [{split}]: {' '.join(str(err).split())[:200]}") from None

    def _rows(self, split: str):
        table = self._load(split)
        for i, row in enumerate(table):
            yield f"{self.config.path} [{split}] row {i}", row

    def read_examples(self):
        if not self.config.path:
            raise DataError("data=hf: set data.path to a hub name, a folder or a data file")
        test = None
        if self.config.test_split:
            test = self._examples(self._rows(self.config.test_split))
        elif self.config.test_path:  # a separate JSON/JSONL file, as for `json`
            test = self._read(self.config.test_path)
        self.notices.append(f"read with datasets: {self.config.path} split {self.config.split}"
                            + (f", D_test split {self.config.test_split}" if self.config.test_split else ""))
        return self._examples(self._rows(self.config.split)), test
