"""Fuzzing the command line: any set of `key=value` overrides either resolves (exit 0) or is
refused in one line that starts with `seqedit:` (exit 2); never a traceback."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from benchmark.cli import main
from benchmark.config import compose

EDITORS = ["tpatcher", "ft_all", "ft_kl_last", "constrained_ft", "knn_lm", "sera", "ke_style", "mend_style"]
DATASETS = ["facts", "fever", "zsre", "trex", "json"]


def _keys() -> list[str]:
    keys = set()
    for editor, data in zip(EDITORS, DATASETS * 2):
        cfg = OmegaConf.to_container(compose([f"editor={editor}", f"data={data}"]))
        stack = [("", cfg)]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict) and v:
                    stack.append((key + ".", v))
                else:
                    keys.add(key)
    return sorted(keys)


KEYS = _keys()
ODD = ["", "[0", "{", "null", "[0,0]", "[-1]", "[0, 1, 0]", "nan", "NaN", "inf", "-inf", "true", "[]", "{a: 1}",
       "${oops}", "???", "-1", "0", "1e309", "-0", "'", '"', "\\", "..", "/", "a=b", "1,2", "0x10", "[[1]]"]
values = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats().map(str), st.sampled_from(ODD),
                   st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(["editor", "data", "model", "experiment"]),
                 st.sampled_from(KEYS).map(lambda k: k + ".nope"), st.text(max_size=8))
override = st.one_of(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=10))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EDITORS), st.lists(override, min_size=1, max_size=4))
def test_any_overrides_resolve_or_fail_in_one_line(editor, overrides):
    import io
    from contextlib import redirect_stderr, redirect_stdout

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(["config", f"editor={editor}", *overrides])
    message = err.getvalue()
    assert code in (0, 2), message
    if code == 2:
        assert message.startswith("seqedit: ") and message.count("\n") == 1, message
    else:
        assert not message


@pytest.mark.parametrize("overrides, names", [
    (["loop.folds=[0"], "loop.folds=[0"),
    (["loop.folds=[0,0]"], "loop.folds"),
    (["loop.max_fold_examples=-50"], "loop.max_fold_examples"),
    (["loop.max_fold_examples=0"], "loop.max_fold_examples"),
    (["loop.test_limit=-1"], "loop.test_limit"),
    (["editor="], "editor="),
    (["editor.lr=nan"], "editor.lr"),
    (["editor.layer=99"], None),  # checked when the model is known: see test_adapters
    (["trainer.accelerator=tpu"], "trainer.accelerator"),
    (["model.device=gpu"], "model.device"),
    (["model.device=cuda:99"], "model.device"),
    (["model.checkpoint=/etc/passwd"], "model.checkpoint"),
    (["data.num_folds=0"], "data.num_folds"),
    (["data.folds=3"], "data.num_folds"),  # a renamed key says its new name
])
def test_the_reported_bad_inputs_name_their_key(capsys, overrides, names):
    code = main(["config", *overrides])
    err = capsys.readouterr().err
    if names is None:
        assert code == 0
        return
    assert code == 2 and err.count("\n") == 1 and names in err, err


def test_a_gpu_model_with_a_cpu_trainer_is_refused(capsys, monkeypatch):
    """With trainer.accelerator=cpu Lightning moves the model back to the CPU for the stream: a run
    asked for on the GPU would quietly run on the CPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # as on a machine with one GPU
    assert main(["config", "model.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trainer.accelerator=cpu" in err and "model.device=cuda" in err
    assert main(["config", "model.device=cuda", "trainer.accelerator=gpu"]) == 0


@pytest.mark.usefixtures("scripted")
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_run_folder_damaged_at_random_resumes_or_is_refused_in_one_line(tmp_path_factory, data):
    """A finished run folder, one of its files damaged at random (a byte changed, cut short, emptied
    or removed), resumed: either exit 0 with complete results, or exit 2 with one `seqedit:` line,
    never a traceback; and nothing outside the run folder changes."""
    import json
    import shutil
    import sys
    from io import StringIO

    root = tmp_path_factory.mktemp("fuzz")
    pristine = _finished_folder(tmp_path_factory)
    shutil.copytree(pristine, root / "r")
    files = sorted(p for p in (root / "r").rglob("*") if p.is_file() and p.name != ".lock")
    target = data.draw(st.sampled_from(files))
    raw = target.read_bytes()
    how = data.draw(st.sampled_from(["flip", "cut", "empty", "remove"]))
    if how == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        target.write_bytes(raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:])
    elif how == "cut":
        target.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif how == "empty":
        target.write_bytes(b"")
    else:
        target.unlink()
    outside = {p: p.read_bytes() for p in root.iterdir() if p.is_file()}
    err, sys.stderr = sys.stderr, StringIO()
    try:
        code = main([*RUN, f"output_dir={root}", "resume=true"])
    finally:
        err, sys.stderr = sys.stderr.getvalue(), err
    lines = [x for x in err.splitlines() if x.startswith("seqedit:")]
    assert code in (0, 2), (target.name, how, err[-400:])
    if code == 2:
        assert lines and "Traceback" not in err, (target.name, how, err[-400:])
    else:
        assert json.loads((root / "r" / "results.json").read_text())["metrics"]["SR"]["folds"] == 2
    assert {p: p.read_bytes() for p in root.iterdir() if p.is_file()} == outside


RUN = ["run", "editor=scripted", "data=handmade", "model=tiny-llama", "run_id=r", "loop.progress=false",
       "loop.state_overhead=0"]


def _finished_folder(factory):
    """One finished run of the scripted editor, made once per session."""
    folder = factory.getbasetemp() / "pristine-run"
    if not (folder / "r" / "results.json").exists():
        assert main([*RUN, f"output_dir={folder}"]) == 0
    return folder / "r"
