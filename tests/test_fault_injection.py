"""Fault injection (slow): a run killed with SIGKILL at seeded random moments, for one editor of
each family of state (patches and memory, changed weights, a datastore, a hypernetwork), then
resumed, ends with exactly the metrics of a run that was never stopped, or stops with a one-line
error; never with different numbers."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TRAINING, trained_editor_state, trained_weights

pytestmark = pytest.mark.slow

EDITORS = {
    "tpatcher": ["editor.max_steps=60"],
    "ft_last": ["editor.lr=1e-3", "editor.max_steps=60"],
    "knn_lm": ["editor.epsilon=0.01", "editor.backend=torch"],
    "mend_style": ["editor.edit_lr=0.1", "editor.train_examples=200", "editor.train_epochs=3", "editor.train_lr=1e-3"],
}
KILLS = 3  # seeded kill moments per editor


def _args(editor: str, out, run_id: str) -> list[str]:
    init = [f"{k}={v}" for k, v in TRAINING["decoder"].items()]
    return ["run", f"editor={editor}", *EDITORS[editor], "model=tiny-llama", "data=facts", *init,
            "loop.folds=[0,1]", "loop.max_fold_examples=12", "loop.progress=false", f"output_dir={out}",
            f"run_id={run_id}"]


def _cli(args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def _folds(out, run_id):
    results = json.loads((out / run_id / "results.json").read_text())
    return {f: {k: v for k, v in m.items() if k != "edit_seconds_median"} for f, m in results["folds"].items()}


@pytest.mark.parametrize("editor", list(EDITORS))
def test_sigkill_at_random_moments_then_resume_gives_the_same_metrics(editor, tmp_path):
    trained_weights("decoder")  # the initial model, cached before the runs share it
    if editor == "mend_style":
        row = {a.split("=")[0][7:]: a.split("=")[1] for a in EDITORS["mend_style"]}
        trained_editor_state("mend_style", "decoder", **row)
    clean = _cli(_args(editor, tmp_path, "clean"))
    _, err = clean.communicate(timeout=900)
    assert clean.returncode == 0, err
    expected = _folds(tmp_path, "clean")
    records = tmp_path / "clean" / "edits.jsonl"
    total = records.read_text().count("\n")
    rng = random.Random(editor)
    for kill in range(KILLS):
        run_id = f"killed-{kill}"
        at = rng.randint(1, total - 1)  # kill once this many record lines are written
        proc = _cli(_args(editor, tmp_path, run_id))
        path = tmp_path / run_id / "edits.jsonl"
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if path.exists() and path.read_text().count("\n") >= at:
                time.sleep(rng.random() * 0.3)  # somewhere inside the next example
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
        resumed = _cli([*_args(editor, tmp_path, run_id), "resume=true"])
        _, err = resumed.communicate(timeout=900)
        if resumed.returncode != 0:  # refused: then in one line, naming what is wrong
            assert resumed.returncode == 2 and err.strip().count("\n") == 0, err
            continue
        assert _folds(tmp_path, run_id) == expected, (editor, kill, at)
