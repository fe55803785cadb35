"""Sweeps (W&B format, offline search engine) and folds spread over DDP processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.config import ConfigError
from tests.conftest import ROOT

# the initial model is the tests' decoder (conftest TRAINING, cached once), not demo_qa's own init
TINY_RUN = ["model=tiny-llama", "init.epochs=20", "init.lr=1e-3", "init.batch_size=32", "init.keep=last",
            "init.threads=1", "loop.max_fold_examples=4", "loop.test_limit=20",
            "data.train_subsample=30", "loop.progress=false"]


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_validates(path):
    from benchmark.sweep import load_sweep

    spec = load_sweep(path)
    assert spec["metric"]["name"].startswith("final/")


@pytest.mark.parametrize("change,message", [
    ({"editor.nope": {"values": [1, 2]}}, "parameter editor.nope=1: unknown config key 'editor.nope'"),
    ({"editor.lr": {"values": [-1.0]}}, "parameter editor.lr=-1.0"),
    ({"editor.lr": {"bogus": 1}}, "not a valid W&B sweep"),
])
def test_a_bad_sweep_file_is_one_line_naming_the_key(tmp_path, change, message):
    import yaml

    from benchmark.sweep import load_sweep

    spec = yaml.safe_load((ROOT / "sweeps" / "ft_kl.yaml").read_text())
    spec["parameters"].update(change)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_sweep(bad)
    assert message in str(err.value) and str(bad) in str(err.value) and "\n" not in str(err.value)


def test_offline_sweep_runs_trials_continues_and_reports_the_best(tmp_path):
    import yaml

    from benchmark.build import build_data
    from benchmark.config import compose, instantiate
    from benchmark.sweep import run_sweep, sweep_leaderboard, test_best

    # an untrained model (init.epochs=0): the sweep's mechanics need edits, not a model that knows
    # the facts, and the modified facts would otherwise train one more initial model (~45 s cold)
    extra = [*TINY_RUN, "init.epochs=0", "loop.folds=[0]", "editor.max_steps=10"]
    data = build_data(instantiate(compose(["experiment=demo_qa", "data.target=modified", *extra])))
    val_uids = {e.uid for e in data.splits.val}
    folder = run_sweep(ROOT / "sweeps" / "ft_kl.yaml", 1, extra, tmp_path)
    run_sweep(ROOT / "sweeps" / "ft_kl.yaml", 1, extra, tmp_path)  # a second call continues the search
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    assert [t["run_id"] for t in trials] == ["trial-000", "trial-001"]
    assert trials[0]["config"] != trials[1]["config"]  # the engine proposed two different points
    for t in trials:
        results = json.loads((Path(t["run_dir"]) / "results.json").read_text())
        assert t["metric"] == results["metrics"]["A_mean"]["mean"]
        config = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert config["editor"]["lr"] == t["config"]["editor.lr"]["value"]
        assert list((Path(t["run_dir"]) / "wandb").glob("offline-run-*")), "not logged to W&B offline"
        csv = (Path(t["run_dir"]) / "logs" / "metrics.csv").read_text()
        assert any(line.split(",")[1] == "final/A_mean" for line in csv.splitlines()[1:])
        assert results["split"] == "val" and results["metrics"]["TestR"]["mean"] is None  # D_test unread
        streamed = {json.loads(x)["uid"] for x in (Path(t["run_dir"]) / "edits.jsonl").read_text().splitlines()
                    if json.loads(x)["type"] == "edit"}
        assert streamed <= val_uids  # tuned on D_val facts only
    board = sweep_leaderboard(folder)
    best = max(trials, key=lambda t: t["metric"])
    assert "chosen on D_val (loop.split=val)" in board
    assert f"| ft_kl_last | {best['run_id']} | {best['metric']:.4f} | - |" in board  # not tested yet
    (tested,) = test_best(folder)
    results = json.loads((tested / "results.json").read_text())
    assert tested.name == f"test-{best['run_id']}" and results["split"] == "edit"
    board = sweep_leaderboard(folder)
    assert f"| {results['metrics']['SR']['mean']:.4f} |" in board.split(best["run_id"], 1)[1]


def test_wandb_agent_style_arguments_are_overrides(capsys):
    from benchmark.cli import main

    assert main(["config", "editor=ft_all", "--editor.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def _run(args, out):
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "editor=ft_last", "editor.lr=1e-3", *TINY_RUN,
           "loop.folds=[0,1,2]", f"output_dir={out}", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((Path(out) / args[0].split("=")[1] / "results.json").read_text())


def _without_time(lines):
    return [{k: v for k, v in r.items() if k not in ("seconds",)} for r in lines]


def test_two_cpu_processes_give_the_same_folds_as_one(tmp_path):
    one = _run(["run_id=one"], tmp_path)
    two = _run(["run_id=two", "trainer.strategy=ddp", "trainer.devices=2"], tmp_path)
    drop = "edit_seconds_median"
    assert {f: {k: v for k, v in m.items() if k != drop} for f, m in one["folds"].items()} == \
           {f: {k: v for k, v in m.items() if k != drop} for f, m in two["folds"].items()}
    assert sorted(two["folds"]) == ["0", "1", "2"]
    ranks = [json.loads((tmp_path / "two" / "ranks" / r / "initial.json").read_text())["mistakes"] for r in "01"]
    assert sorted(ranks[0]) == ["0", "2"] and sorted(ranks[1]) == ["1"]  # rank r takes folds r, r+2, ...
    read = lambda run: [json.loads(x) for x in (tmp_path / run / "edits.jsonl").read_text().splitlines()]  # noqa: E731
    fold_end = [r for r in read("two") if r["type"] == "fold_end"]
    assert [r["fold"] for r in fold_end] == [0, 1, 2]
    assert len(read("one")) == len(read("two"))
    initial = [json.loads((tmp_path / run / "initial.json").read_text()) for run in ("one", "two")]
    assert initial[0] == initial[1]
    header = lambda path: [x for x in path.read_text().splitlines() if x.startswith("# ")]  # noqa: E731
    assert header(tmp_path / "two" / "config.yaml") == header(tmp_path / "two" / "ranks" / "0" / "config.yaml")
    assert [x.split(":")[0] for x in header(tmp_path / "two" / "config.yaml")] == ["# seed", "# code_version"]


def test_a_sweep_writes_under_output_dir_and_nothing_under_home(tmp_path, monkeypatch, capsys):
    """`seqedit sweep FILE output_dir=X` puts the sweep's folder in X (it was ignored), and W&B's
    offline files stay there too, not under the home directory; run_id= is refused in one line."""
    from benchmark.cli import main

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    extra = [*TINY_RUN, "init.epochs=0", "loop.folds=[0]", "editor.max_steps=2", "loop.max_fold_examples=2"]
    code = main(["sweep", str(ROOT / "sweeps" / "ft_kl.yaml"), "--count", "1", f"output_dir={tmp_path / 'x'}", *extra])
    assert code == 0
    assert (tmp_path / "x" / "ft_kl" / "trials.jsonl").exists() and not (ROOT / "runs" / "sweeps" / "x").exists()
    assert not [p for p in home.rglob("*") if "wandb" in p.name.lower()], list(home.rglob("*"))
    assert main(["sweep", str(ROOT / "sweeps" / "ft_kl.yaml"), "run_id=a"]) == 2
    assert "run_id= cannot be given" in capsys.readouterr().err
