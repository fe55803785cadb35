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



def test_sigterm_or_sigint_at_random_moments_ends_in_one_line_and_resume_gives_the_same_metrics(tmp_path):
    """SIGTERM or SIGINT at seeded random moments of a run's life, from 0.2 s after its start
    (imports, set-up, initial evaluation, stream, final evaluation, results): the run ends with
    exit 0 (it had finished), or 143 / 130 with one last `seqedit:` line and no traceback; resumed,
    it ends with the metrics of a run that was never stopped."""
    args = ["run", "editor=ft_last", "editor.lr=1e-3", "editor.max_steps=20", "model=tiny-llama", "data=facts",
            "init.epochs=0", "loop.folds=[0,1]", "loop.max_fold_examples=8", "loop.progress=false",
            f"output_dir={tmp_path}"]
    began = time.time()
    clean = _cli([*args, "run_id=clean"])
    _, err = clean.communicate(timeout=600)
    assert clean.returncode == 0, err
    length = time.time() - began
    expected = _folds(tmp_path, "clean")
    rng = random.Random(7)
    for n in range(8):
        sig = rng.choice([signal.SIGTERM, signal.SIGINT])
        proc = _cli([*args, f"run_id=r{n}"])
        time.sleep(rng.uniform(0.2, length))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 128 + sig), (n, sig, err[-800:])
        assert "Traceback" not in err, (n, sig, err[-800:])
        if proc.returncode:
            assert err.strip().splitlines()[-1].startswith("seqedit:"), (n, sig, err[-400:])
        resumed = _cli([*args, f"run_id=r{n}", "resume=true"])
        _, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, (n, err[-800:])
        assert _folds(tmp_path, f"r{n}") == expected, n
