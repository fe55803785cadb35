"""The leaderboard from run folders written by hand (known metrics): one table per model, dataset
and data settings, run ids, the settings that differ, plots that never overwrite one another, and
a self-contained page. The browser test (slow) clicks a header in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.leaderboard import build

RUNS = {  # run id: (editor, data num_folds, editor settings, SR means)
    "a/tpatcher": ("tpatcher", 5, {"layer": -1}, 0.90),
    "b/tpatcher": ("tpatcher", 5, {"layer": -2}, 0.70),
    "c/ft_all": ("ft_all", 5, {"lr": 1e-5}, 0.80),  # ft_all's default lr
    "d/ft_all": ("ft_all", 2, {"lr": 0.01}, 0.50),  # other data settings: a table of its own
}


def write_runs(root: Path) -> None:
    for run_id, (editor, num_folds, settings, sr) in RUNS.items():
        folder = root / run_id
        folder.mkdir(parents=True)
        config = {"editor": {"name": editor, **settings}, "model": {"name": "tiny-llama"},
                  "data": {"name": "facts", "task": "qa", "num_folds": num_folds},
                  "loop": {"folds": None, "progress": False}, "seed": 0, "output_dir": str(root), "run_id": run_id}
        (folder / "config.yaml").write_text("# seed: 0\n" + yaml.safe_dump(config))
        lines = [{"type": "edit", "fold": 0, "edited": True, "success": True},
                 {"type": "edit", "fold": 0, "edited": True, "success": sr > 0.6},
                 {"type": "eval", "fold": 0, "edits": 2, "TrainR": 0.9, "TestR": sr},
                 {"type": "fold_end", "fold": 0, "editor": {"activation_matrix": [[1.0, 0.0], [0.2, 0.9]],
                                                             "labels": ["0.0", "1.0"]} if editor == "tpatcher" else {}}]
        (folder / "edits.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        metrics = {"SR": {"mean": sr, "std": 0.05, "folds": 2}, "E": {"mean": 4.0, "std": 1.0, "folds": 2}}
        (folder / "results.json").write_text(json.dumps({"metrics": metrics}))


@pytest.fixture
def board(tmp_path):
    write_runs(tmp_path / "runs")
    md, pngs = build(tmp_path / "runs", tmp_path / "out")
    return md, pngs, tmp_path / "out" / "leaderboard.html"


def test_one_table_per_data_settings_with_run_ids_and_differences(board):
    md, _, _ = board
    text = md.read_text()
    tables = re.findall(r"^## (.*)$", text, re.M)
    assert len(tables) == 2 and all("facts/qa — tiny-llama — data" in t for t in tables)
    assert "Data settings: data.num_folds=2" in text and "Data settings: data.num_folds=5" in text
    assert "| tpatcher | a/tpatcher | 2 | **0.900 ± 0.050** |" in text
    assert "editor.layer=-1" in text and "editor.layer=-2" in text  # same editor, other settings
    five, two = text.split("Data settings: data.num_folds=5")[1], text.split("Data settings: data.num_folds=2")[1]
    assert "editor.lr" not in five.split("##")[0]  # different editors differ in all their keys: not shown
    assert "| ft_all | d/ft_all | 2 | 0.500 ± 0.050 | 4 ± 1 | editor.lr=0.01 |" in two  # not ft_all's default


def test_plots_never_overwrite_each_other_and_the_page_holds_them(board):
    _, pngs, page = board
    names = [p.name for p in pngs]
    assert len(names) == len(set(names)) == 2 * 2 + 2  # SR and retain per table, a matrix per T-Patcher run
    assert sum(n.startswith("patch_activations-a_tpatcher") for n in names) == 1
    html = page.read_text()
    assert html.count("src='data:image/png;base64,") == len(pngs)
    assert "http://" not in html and "https://" not in html  # nothing fetched from a network
    assert html.count("<table class='board'>") == 2


def test_run_times_and_the_demos_part_times(tmp_path):
    write_runs(tmp_path / "runs")
    for run_id, seconds in (("a/tpatcher", 90.0), ("b/tpatcher", 30.0)):  # the other runs were resumed: no time
        results = tmp_path / "runs" / run_id / "results.json"
        results.write_text(json.dumps({**json.loads(results.read_text()), "wall_seconds": seconds}))
    times = {"parts": {"qa": {"seconds": 150.0, "editors": {"initial model": 30.0, "tpatcher": 120.0}}}}
    (tmp_path / "runs" / "demo_times.json").write_text(json.dumps(times))
    md, _ = build(tmp_path / "runs", tmp_path / "out")
    text = md.read_text()
    assert "| a/tpatcher | 2 | **0.900 ± 0.050** | 4 ± 1 | 90 |" in text
    assert "| d/ft_all | 2 | 0.500 ± 0.050 | 4 ± 1 |" in text
    assert "Run time: 2.0 min over 2 run(s)" in text  # a and b share a table; c and d have no time
    assert "| qa | 2.5 | initial model 30 s, tpatcher 120 s |" in text
    assert "<h2>Time per part</h2>" in (tmp_path / "out" / "leaderboard.html").read_text()
    (tmp_path / "runs" / "demo_times.json").write_text('{"parts": {"qa": {"seconds": 1}}}')
    with pytest.raises(ValueError, match=r"demo_times.json: not a readable demo time file"):
        build(tmp_path / "runs", tmp_path / "again")
    assert not (tmp_path / "again" / "leaderboard.md").exists()  # refused before anything is written


@pytest.mark.slow
def test_the_page_sorts_by_a_click_and_shows_every_image_in_chromium(board):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e .[browser]")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(board[2].as_uri())
        table = driver.find_elements(By.CSS_SELECTOR, "table.board")[-1]  # the num_folds=5 table: 3 runs
        if len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) != 3:
            table = driver.find_elements(By.CSS_SELECTOR, "table.board")[0]
        header = [th for th in table.find_elements(By.TAG_NAME, "th") if th.text.startswith("SR")][0]

        def run_column():
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
            return [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows]

        header.click()
        assert run_column() == ["a/tpatcher", "c/ft_all", "b/tpatcher"]  # SR descending
        header.click()
        assert run_column() == ["b/tpatcher", "c/ft_all", "a/tpatcher"]
        loaded = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert loaded and all(loaded)
        driver.save_screenshot(str(board[2].with_suffix(".png")))
    finally:
        driver.quit()


def test_intervals_in_one_line_and_every_run_overlapping_the_best_is_bold(tmp_path):
    """A cell is `mean [low, high]` on one line; the best run and every run whose interval overlaps
    its interval are bold, a run clear of it is not (a difference inside the noise is no ranking)."""
    write_runs(tmp_path / "runs")
    intervals = {"a/tpatcher": [0.85, 0.95], "b/tpatcher": [0.60, 0.80], "c/ft_all": [0.70, 0.86]}
    for run_id, ci in intervals.items():
        path = tmp_path / "runs" / run_id / "results.json"
        results = json.loads(path.read_text())
        results["metrics"]["SR"]["ci95"] = ci
        path.write_text(json.dumps(results))
    md, _ = build(tmp_path / "runs", tmp_path / "out")
    text = md.read_text()
    assert "| tpatcher | a/tpatcher | 2 | **0.900 [0.850, 0.950]** |" in text
    assert "| ft_all | c/ft_all | 2 | **0.800 [0.700, 0.860]** |" in text  # overlaps the best: bold
    assert "| tpatcher | b/tpatcher | 2 | 0.700 [0.600, 0.800] |" in text  # clear of it
    html = (tmp_path / "out" / "leaderboard.html").read_text()
    assert "<span class='std'> [0.850, 0.950]</span>" in html and "white-space:nowrap" in html


def test_a_cell_whose_folds_differ_is_marked_and_the_mark_explained(tmp_path):
    write_runs(tmp_path / "runs")
    path = tmp_path / "runs" / "b/tpatcher" / "results.json"
    results = json.loads(path.read_text())
    results["metrics"]["SR"].update(ci95=[0.6, 0.8], folds_differ_p=0.001)
    path.write_text(json.dumps(results))
    md, _ = build(tmp_path / "runs", tmp_path / "out")
    text = md.read_text()
    assert "0.700 [0.600, 0.800] †" in text and "†: the folds differ" in text
    assert "[0.600, 0.800] †" in (tmp_path / "out" / "leaderboard.html").read_text()


def test_markdown_shows_run_ids_and_settings_literally(tmp_path):
    """A run id or config value holding HTML or a `|` is shown as text (code hosts render raw HTML
    in Markdown), and the table's rows keep their cells."""
    write_runs(tmp_path / "runs")
    bad = tmp_path / "runs" / "a" / "<img src=x onerror=alert(1)>"
    (tmp_path / "runs" / "a" / "tpatcher").rename(bad)
    config = bad / "config.yaml"
    config.write_text(config.read_text().replace("layer: -1", "layer: '<b>x|y</b>'"))
    md, _ = build(tmp_path / "runs", tmp_path / "out")
    text = md.read_text()
    assert "<img" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "&lt;b&gt;x\\|y&lt;/b&gt;" in text
    rows = [line for line in text.splitlines() if "onerror" in line]
    assert rows and all(line.count(" | ") == rows[0].count(" | ") for line in rows)


def test_folders_that_keep_the_results_only_give_their_rows(tmp_path):
    """benchmark/figures keeps each run's config.yaml and results.json, not its records: the
    leaderboard still makes its table from them (no curves for those runs); the real CounterFact
    rows shipped there are the example."""
    root = tmp_path / "figures"
    shutil.copytree(Path(__file__).resolve().parents[1] / "benchmark" / "figures" / "counterfact_seq_smollm2", root)
    md, pngs = build(root, tmp_path / "out")
    assert pngs == []  # no records, no curves
    text = md.read_text()
    for run_id, cell in (("grace_T100", "1.000 [1.000, 1.000]"), ("tpatcher_T100", "0.993 [0.983, 1.000]")):
        assert re.search(rf"\| {run_id} \|.*{re.escape(cell)}", text), run_id
    (root / "grace_T100" / "edits.jsonl").write_text("{not json\n")  # a broken record file is still refused
    with pytest.raises(ValueError, match="edits.jsonl: not a readable run file"):
        build(root, tmp_path / "out2")


def test_runs_of_a_shipped_sample_from_two_checkouts_share_a_table():
    from benchmark.leaderboard import _shipped_path

    a = _shipped_path({"name": "zsre", "path": "/tmp/wt-a/configs/experiment/../../data/samples/zsre_mend"})
    b = _shipped_path({"name": "zsre", "path": "/home/me/seqedit/data/samples/zsre_mend"})
    assert a == b == {"name": "zsre", "path": "data/samples/zsre_mend"}
    mine = {"name": "counterfact", "path": "/data/counterfact-edit.json"}  # a user's file keeps its path
    assert _shipped_path(mine) == mine


def test_columns_choose_the_metrics_and_their_order(tmp_path):
    write_runs(tmp_path / "runs")
    md, _ = build(tmp_path / "runs", tmp_path / "out", columns=["E", "SR", "Loc"])  # Loc: no run has it
    text = md.read_text()
    assert text.count("| editor | run | folds | E | SR |") == 2 and "**Loc**" in text and "| Loc |" not in text
    with pytest.raises(ValueError, match="columns: Rel is not a leaderboard metric"):
        build(tmp_path / "runs", tmp_path / "again", columns=["SR", "Rel"])
    assert not (tmp_path / "again").exists()  # refused before anything is written


def test_a_run_of_an_editor_this_checkout_does_not_register_keeps_its_row(tmp_path):
    """A user's plugin (or a run of another version): no defaults to compare its settings with,
    so only the settings in which runs of the table differ are shown."""
    write_runs(tmp_path / "runs")
    folder = tmp_path / "runs" / "e" / "my_editor"
    shutil.copytree(tmp_path / "runs" / "c" / "ft_all", folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["editor"] = {"name": "my_editor", "lr": 0.5}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    md, _ = build(tmp_path / "runs", tmp_path / "out")
    assert "| my_editor | e/my_editor | 2 | 0.800 ± 0.050 | 4 ± 1 | - |" in md.read_text()


def test_the_path_an_editor_mode_picks_is_not_a_setting(tmp_path):
    """editor.mode chooses a path to the same computation (full forward, replayed blocks, kept
    positions): a run made before a default path changed shows no setting for it, while a setting
    that changes the computation still shows."""
    write_runs(tmp_path / "runs")
    config = tmp_path / "runs" / "c" / "ft_all" / "config.yaml"
    config.write_text(config.read_text().replace("lr: 1.0e-05", "lr: 1.0e-05\n  mode: naive"))
    md, _ = build(tmp_path / "runs", tmp_path / "out")
    text = md.read_text()
    assert "mode: naive" in config.read_text() and "editor.mode" not in text
    assert "| ft_all | d/ft_all | 2 | 0.500 ± 0.050 | 4 ± 1 | editor.lr=0.01 |" in text
