from pathlib import Path

import pytest

from benchmark.config import CONFIG_DIR, compose
from benchmark.demo import demo
from benchmark.run import run
from tests.conftest import FAMILIES, SHARED_DATA

TINY_FOR = {"smollm2-135m": "tiny-llama", "minilm-l6": "tiny-bert"}


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_runs_a_step_on_a_tiny_model(experiment, tmp_path):
    cfg = compose([f"experiment={experiment}"])
    tiny = TINY_FOR.get(str(cfg.model.name), str(cfg.model.name))
    assert tiny in FAMILIES.values()
    files = []
    if cfg.data.name == "trex":  # an experiment on published files: the real samples beside the checkout
        if not (SHARED_DATA / "trex").exists():
            pytest.skip("needs ../shared/data/trex")
        files = [f"data.path={SHARED_DATA / 'trex'}"]
    result = run(compose([f"experiment={experiment}", f"model={tiny}", "init.epochs=0", "loop.folds=[0]",
                          "loop.max_fold_examples=2", "loop.progress=false", "editor.max_steps=2",
                          f"output_dir={tmp_path}", *files]))
    assert result["metrics"]["N"]["folds"] == 1


def test_quick_demo_writes_leaderboard_and_plots(tmp_path):
    md = demo(["quick=true", f"output_dir={tmp_path}", "loop.progress=false"])
    text = md.read_text()
    for editor in ("tpatcher", "ft_all", "ft_kl_last"):
        assert f"| {editor} |" in text
    assert "facts/qa" in text and "facts/claims" in text
    pngs = sorted(Path(tmp_path).glob("*.png"))
    names = " ".join(p.name for p in pngs)
    assert "sr_vs_edits" in names and "retain_vs_edits" in names and "patch_activations-qa_tpatcher" in names
    assert (Path(tmp_path) / "leaderboard.html").stat().st_size > sum(p.stat().st_size for p in pngs)  # embedded
    assert all(p.stat().st_size > 5000 for p in pngs)


def test_init_command_trains_and_reports(capsys):
    import json

    from benchmark.cli import main

    assert main(["init", "model=tiny-llama", "init.epochs=1", "loop.progress=false"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["weights"].endswith("model.safetensors")
    assert set(out["accuracy"]) == {"test", "train_subsample", "edit"}
