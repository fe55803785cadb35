import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.config import CONFIG_DIR, ConfigError, compose, instantiate
from benchmark.registry import EDITORS, Registry, UnknownNameError


def test_registry_rejects_duplicates_and_bad_names():
    reg = Registry("thing")
    reg.register("a-1", object, dict, "one line")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a-1", object, dict, "again")
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("Bad Name", object, dict, "x")
    with pytest.raises(ValueError, match="one-line"):
        reg.register("b", object, dict, "two\nlines")
    with pytest.raises(UnknownNameError, match="choose one of: a-1"):
        reg.get("zzz")


def test_every_shipped_yaml_composes_and_validates():
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert files
    for path in files:
        if path.parent.name == "experiment":
            cfg = compose([f"experiment={path.stem}"])
        else:
            cfg = compose([], experiment_file=path)
        run = instantiate(cfg)
        assert run.editor.name in EDITORS


def test_overrides_reach_typed_configs():
    run = instantiate(compose(["editor=ft_kl_last", "editor.lr=0.5", "loop.eval_every=7", "data.num_folds=3"]))
    assert (run.editor.layers, run.editor.kl_weight, run.editor.lr) == ("last", 1.0, 0.5)
    assert run.loop.eval_every == 7 and run.data.num_folds == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["editor=nope"], "unknown editor 'nope'; choose one of: alphaedit, constrained_ft, defer"),
        (["data=nope"], "unknown dataset 'nope'; choose one of: counterfact, facts"),
        (["editor.bogus=1"], "unknown config key 'editor.bogus'; valid keys of editor: activation"),
        (["loop.eval_every=0"], "loop.eval_every must be at least 1"),
        (["editor=ft_all", "editor.layers=middle"], "editor.layers must be all or last"),
        (["experiment=nope"], "unknown experiment 'nope'"),
        (["noequals"], "not of the form key=value"),
    ],
)
def test_bad_inputs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        instantiate(compose(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_exit_status_and_one_line(capsys):
    assert main(["run", "editor=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "choose one of" in err
    assert main(["frobnicate"]) == 2
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("tpatcher", "ft_kl_last", "facts", "tiny-bart"):
        assert name in out


def test_bad_yaml_names_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("editor: {name: ft_all\n")
    with pytest.raises(ConfigError, match=str(bad)):
        compose([], experiment_file=bad)


def test_help_prints_every_key_with_its_default_and_help(capsys):
    from benchmark.cli import main

    assert main(["help", "editor", "loop", "editor=tpatcher", "editor.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "editor (tpatcher):" in out and "editor.lr: float = 0.5  # Adam learning rate of the patch" in out
    assert "loop.split: str = 'edit'" in out and "data." not in out
    assert main(["run", "--help"]) == 0 and "seqedit help" in capsys.readouterr().out
    assert main(["help", "nope"]) == 2


def test_config_files_from_anywhere(tmp_path: Path, monkeypatch, capsys):
    """experiment=FILE.yaml, --config FILE.yaml and data=FILE.yaml work from any directory; a data
    file named relatively in a YAML is found beside that YAML; a run reads it."""
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = [{"q": f"Book {i} was written by", "a": f" Author {i}"} for i in range(40)]
    (folder / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "my_data.yaml").write_text("data:\n  name: json\n  path: edits.jsonl\n"
                                         "  fields: {prompt: q, target: a}\n  num_folds: 2\n")
    (folder / "exp.yaml").write_text("model: {name: tiny-llama}\neditor: {name: ft_last, lr: 0.001}\n"
                                     "data: {name: json, path: edits.jsonl, fields: {prompt: q, target: a}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    by_file = instantiate(compose(["data=../mine/my_data.yaml"]))
    assert by_file.data.name == "json" and by_file.data.path == str(folder / "edits.jsonl")
    assert by_file.data.num_folds == 2
    experiment = instantiate(compose([f"experiment={folder / 'exp.yaml'}", "editor.max_steps=2"]))
    assert (experiment.editor.name, experiment.editor.lr, experiment.model.name) == ("ft_last", 0.001, "tiny-llama")
    assert main(["config", "--config", str(folder / "exp.yaml")]) == 0
    assert "ft_last" in capsys.readouterr().out
    assert main(["run", f"experiment={folder / 'exp.yaml'}", "data=../mine/my_data.yaml", "editor.max_steps=2",
                 "loop.folds=[0]", "loop.progress=false", f"output_dir={tmp_path / 'runs'}", "run_id=r"]) == 0
    assert json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["metrics"]["N"]["folds"] == 1
    for args, message in ((["data=nope.yaml"], "data=nope.yaml: no such file"),
                          ([f"experiment={folder / 'missing.yaml'}"], "no such file")):
        with pytest.raises(ConfigError, match=message):
            compose(args)
    (folder / "noname.yaml").write_text("path: edits.jsonl\n")
    with pytest.raises(ConfigError, match="needs a `name:`"):
        compose([f"data={folder / 'noname.yaml'}"])
