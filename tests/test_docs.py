"""The docs stay true: the site builds strictly (broken links and missing pages fail), the config
reference is what the config dataclasses say, the README's links land on pages and headings that
exist, and its cheap quick-tour commands run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e .[docs]) builds the site")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()


def test_the_config_reference_is_generated_from_the_dataclasses():
    from benchmark.reference import PAGE, markdown

    assert PAGE.read_text(encoding="utf-8") == markdown(), (
        "docs/reference/config.md is out of date: run python -m benchmark.reference")
    assert "### editor=memit_seq" in PAGE.read_text() and "`editor.past_keys`" in PAGE.read_text()


def _slug(heading: str) -> str:
    """The anchor MkDocs (toc) and GitHub give a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_links_land_on_files_and_headings_that_exist():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text)
    local = [(path, anchor) for path, anchor in links if not path.startswith("http")]
    assert len(local) >= 10
    for path, anchor in local:
        target = ROOT / path
        assert target.exists(), f"README links {path}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", target.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README links {path}#{anchor}: no such heading"


def test_readme_is_short_and_names_both_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert "make demo" in text and "make test" in text


def test_every_registered_editor_and_dataset_is_in_the_readme():
    import data.configs  # noqa: F401
    import editors.configs  # noqa: F401
    from benchmark.registry import DATASETS, EDITORS

    text = README.read_text()
    for name in [*EDITORS.names(), *DATASETS.names()]:
        assert f"`{name}`" in text, f"{name} is registered but the README's tables do not name it"


def test_the_quick_tours_cheap_commands_run_as_written():
    """`seqedit list` from the README's quick tour, as a new user types it (the quick demo itself
    is run by tests/test_demo_leaderboard.py)."""
    tour = README.read_text().split("## A quick tour", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in tour.splitlines() if line.startswith("seqedit")]
    assert "seqedit demo quick=true" in commands and "seqedit list" in commands
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", "list"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "tpatcher" in out.stdout and "memit_seq" in out.stdout


def _pages(folder: str) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs" / folder).glob("*.md")}


def test_every_registered_editor_and_dataset_has_a_page_linked_from_its_index():
    import data.configs  # noqa: F401
    import editors.configs  # noqa: F401
    from benchmark.registry import DATASETS, EDITORS

    for folder, registry, key in (("editors", EDITORS, "editor"), ("datasets", DATASETS, "data")):
        pages = _pages(folder)
        index = pages.pop("index.md")
        for name in registry.names():
            holding = [page for page, text in pages.items() if f"`{key}={name}`" in text]
            assert holding, f"{key}={name} is registered but no page in docs/{folder} names `{key}={name}`"
            assert all(f"]({page})" in index for page in holding), f"docs/{folder}/index.md misses {holding}"


def test_editor_pages_quote_only_numbers_the_benchmark_pages_hold():
    """An editor page's Measured section repeats numbers from the benchmark and performance pages;
    each must be found there, so the two cannot drift apart."""
    sources = "".join((ROOT / "docs" / page).read_text() for page in ("benchmarks.md", "results.md", "performance.md"))
    found = 0
    for page, text in _pages("editors").items():
        measured = text.split("## Measured", 1)[1] if "## Measured" in text else ""
        for number in re.findall(r"\d+\.\d+|\d{1,3}(?:,\d{3})+", re.sub(r"\]\([^)]*\)", "]", measured)):
            held = re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d]|,\d)", sources)
            assert held, f"docs/editors/{page} quotes {number}, which the benchmark pages do not hold"
            found += 1
    assert found > 50


def _quoted(metric: dict) -> str:
    low, high = metric["ci95"]
    return f"{metric['mean']:.3f} [{low:.3f}, {high:.3f}]"


def test_kept_results_are_quoted_as_their_results_files_hold_them():
    """Every run kept in benchmark/figures (its config.yaml and results.json) is on the benchmarks
    page with the numbers its results.json holds: Rel., Gen. and Loc. (ER, GR_final, Loc_final)
    with their intervals, or for a run on D_val the mean of the three by which its grid chose. A
    number copied wrong, or a kept run never reported, fails here."""
    page = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split())
    kept = sorted((ROOT / "benchmark" / "figures").glob("*/*/results.json"))
    for path in kept:
        results = json.loads(path.read_text())
        metrics = [results["metrics"][name] for name in ("ER", "GR_final", "Loc_final")]
        cells = [_quoted(metric) for metric in metrics]
        mean = f"{sum(metric['mean'] for metric in metrics) / 3:.3f}"
        where = path.parent.relative_to(ROOT)
        if results["split"] == "val" and not all(cell in page for cell in cells):
            assert mean in page, f"{where}: its mean of Rel., Gen. and Loc. ({mean}) is not on the benchmarks page"
            continue
        for name, cell in zip(("Rel.", "Gen.", "Loc."), cells):
            assert cell in page, f"{where}: {name} {cell} is not on the benchmarks page"
    assert len(kept) >= 30


def test_the_leaderboard_page_is_the_table_its_command_makes():
    """docs/results.md's table is what its `seqedit leaderboard ... columns=...` command makes of
    the runs kept in benchmark/figures (the T = 100 table on D_edit): a row added, changed or
    dropped on one side only fails here."""
    from benchmark.leaderboard import load_runs, table

    page = (ROOT / "docs" / "results.md").read_text()
    columns = re.search(r"leaderboard benchmark/figures/zsre_seq_smollm2 .*?columns=([\w,]+)", page, re.S)[1]
    made = table(load_runs(ROOT / "benchmark" / "figures" / "zsre_seq_smollm2"), columns.split(","))
    section = made.split("Data settings: loop.max_fold_examples=100, loop.split=edit")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    shown = [line for line in page.split("## What it shows")[0].splitlines() if line.startswith("|")]
    assert shown == rows and len(rows) >= 2 + 13


def test_dataset_pages_show_records_of_the_files_they_name():
    """Each `<!-- sample: FILE -->` block is a record of FILE as published (a JSON Lines line or an
    element of a JSON array); the facts page's is an example the embedded dataset makes."""
    import json

    samples = [(page, source.strip(), json.loads(block)) for page, text in _pages("datasets").items()
               for source, block in re.findall(r"<!-- sample: (.+?) -->\n```json\n(.*?)\n```", text, re.S)]
    assert len(samples) >= 7
    for page, source, record in samples:
        if source == "facts":
            from benchmark.build import build_data
            from benchmark.config import compose, instantiate

            examples = build_data(instantiate(compose(["data=facts", "model=tiny-llama"]))).splits.folds[0]
            assert any(record == {"prompt": e.prompt, "target": e.target, "equivalents": e.equivalents,
                                  "relation": e.relation, "subject": e.subject} for e in examples), page
            continue
        text = (ROOT / source).read_text(encoding="utf-8")
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                          if x.strip()]
        assert record in records, f"docs/datasets/{page}: the record shown is not one of {source}'s"
