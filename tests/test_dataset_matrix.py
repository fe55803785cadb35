"""One matrix: every registered dataset and layout is a row that reads real published files (the
samples in tests/fixtures/real, or fixtures in tests/fixtures written to the published layouts), shows
its splits, and names file and line when one record is broken. A new dataset joins with a row."""

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.build import build_data
from benchmark.config import compose, instantiate
from benchmark.registry import DATASETS
from benchmark.types import DataError
from tests.conftest import COUNTERFACT_EDIT, REAL_DATA, ZSRE_MEND

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = ["data.split_ratios=[0.4,0.3,0.3]", "data.num_folds=1"]  # a 5-record sample still has every split
EDIT_FIELDS = ("{prompt: question, target: answer, equivalents: paraphrases, locality_prompt: loc, "
               "locality_answer: loc_ans}")

# row -> (dataset, folder or file to copy, the file whose line is broken, overrides)
ROWS = {
    "facts": ("facts", None, None, []),
    "fever": ("fever", REAL_DATA / "fever", "fever-train-kilt.jsonl", ["data.num_folds=1"]),
    "zsre-kilt": ("zsre", REAL_DATA / "zsre", "structured_zeroshot-train-kilt.jsonl", ["data.layout=kilt", *SMALL]),
    "zsre-mend": ("zsre", ZSRE_MEND, "zsre_mend_train-1k.json", ["data.layout=mend"]),
    # the layouts no public sample exists of: fixtures written to their published fields
    "fever-tpatcher": ("fever", FIXTURES / "fever_tpatcher", "fever-edit.jsonl", ["data.num_folds=1"]),
    "zsre-annotated": ("zsre", FIXTURES / "zsre_annotated", "structured_zeroshot-train-new_annotated_final.jsonl",
                       ["data.layout=annotated", *SMALL]),
    "zsre-tpatcher": ("zsre", FIXTURES / "zsre_tpatcher", "zsre-train.jsonl", ["data.num_folds=1"]),
    "trex": ("trex", REAL_DATA / "trex", "P19.jsonl", []),
    "counterfact-rome": ("counterfact", FIXTURES / "counterfact_rome.json", "counterfact_rome.json", []),
    "counterfact-easyedit": ("counterfact", FIXTURES / "counterfact-edit.json", "counterfact-edit.json", []),
    "counterfact-easyedit-sample": ("counterfact", COUNTERFACT_EDIT / "counterfact-edit-1k.json",
                                    "counterfact-edit-1k.json", []),
    "json": ("json", FIXTURES / "edits.jsonl", "edits.jsonl", [f"data.fields={EDIT_FIELDS}"]),
    # read through Hugging Face `datasets` (Arrow): its errors have no line to name
    "hf": ("hf", FIXTURES / "edits.jsonl", None, [f"data.fields={EDIT_FIELDS}"]),
}


def _needs(source, row: str = ""):
    if source is not None and not source.exists():
        pytest.skip(f"{source} is not beside the checkout")
    if ROWS.get(row, ("",))[0] == "hf":
        pytest.importorskip("datasets")  # the optional `hf` extra


def _load(row: str, source):
    name, _, _, overrides = ROWS[row]
    path = [f"data.path={source}"] if source is not None else []
    return build_data(instantiate(compose([f"data={name}", *path, *overrides])))


def test_every_registered_dataset_has_a_row():
    import data  # noqa: F401

    assert set(DATASETS.names()) - {"handmade", "static"} == {ROWS[r][0] for r in ROWS}


@pytest.mark.parametrize("row", list(ROWS))
def test_each_dataset_reads_its_published_format_into_every_split(row):
    source = ROWS[row][1]
    _needs(source, row)
    dm = _load(row, source)
    sizes = dm.splits.sizes()
    assert sizes["train"] > 0 and sizes["edit"] > 0 and sizes["test"] > 0 and dm.records_read > 0
    stats = dm.stats()
    json.dumps(stats)  # what `seqedit data stats` prints
    assert stats["splits"] == sizes


def _break_line(path, line: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = '{"broken": \n' if path.suffix == ".jsonl" else '    "broken": {,\n'
    path.write_text("".join(lines))


@pytest.mark.parametrize("row", [r for r in ROWS if ROWS[r][2]])
def test_a_broken_record_names_file_and_line(row, tmp_path):
    name, source, broken, _ = ROWS[row]
    _needs(source)
    if source.is_dir():
        copy = tmp_path / source.name
        shutil.copytree(source, copy)
        target = copy / broken
    else:
        copy = target = tmp_path / broken
        shutil.copy(source, copy)
    _break_line(target, 3)
    with pytest.raises(DataError) as err:
        _load(row, copy)
    assert f"{broken}:3" in str(err.value) and "\n" not in str(err.value)


# -- fuzzing: records broken at random ---------------------------------------------------------------
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, width=32)
                           | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner,
                                                                                        max_size=2), max_leaves=4)
MUTATION = st.tuples(st.integers(0, 10**6), st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
                     st.sampled_from(["drop", "set"]), JSON_VALUES)


def _read_records(path: Path) -> list:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _write_records(path: Path, records: list) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=4))


def _mutate(records: list, mutation) -> None:
    """Drop or replace one value somewhere inside one record (a walk down `steps`)."""
    index, steps, action, value = mutation
    parent, key = records, index % len(records)
    for step in steps[:-1]:
        child = parent[key]
        if not isinstance(child, (dict, list)) or not child:
            break
        parent, key = child, (list(child)[step % len(child)] if isinstance(child, dict) else step % len(child))
    if action == "drop":
        del parent[key]
    else:
        parent[key] = value


# a second file of a layout already fuzzed (counterfact-easyedit): 20 s more for no new path
FUZZED_BY_ANOTHER_ROW = {"counterfact-easyedit-sample"}


@pytest.mark.parametrize("row", [r for r in ROWS if ROWS[r][2] and r not in FUZZED_BY_ANOTHER_ROW])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_records_broken_at_random_load_or_fail_in_one_line(row, tmp_path_factory, mutations):
    """Any field dropped or given another JSON type, anywhere in a record of a real file: the data
    loads, or a DataError says what is wrong in one line; never another exception."""
    name, source, broken, _ = ROWS[row]
    _needs(source)
    folder = tmp_path_factory.mktemp(row)
    if source.is_dir():
        shutil.copytree(source, folder, dirs_exist_ok=True)
        target = folder / broken
    else:
        target = folder / broken
        shutil.copy(source, target)
    records = _read_records(target)[:60]  # the 1,000-record zsRE file: the first 60 are enough
    for mutation in mutations:
        if records:
            _mutate(records, mutation)
    _write_records(target, records)
    try:
        _load(row, folder if source.is_dir() else target)
    except DataError as err:
        assert "\n" not in str(err)
