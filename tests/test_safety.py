"""Runs that survive faults: nothing executes code from a run folder, resume verifies before it
trusts, one writer per run folder, signals stop cleanly, and run ids stay inside output_dir."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from benchmark.cli import main
from benchmark.records import ResumeError, RunLock, RunLockedError
from benchmark.registry import UnknownNameError
from tests import scripted
from tests.conftest import ROOT
from tests.test_loop import _run

pytestmark = pytest.mark.usefixtures("scripted")  # the test pieces, registered per test


class Payload:
    """Pickled, it would create `marker` if a loader unpickled arbitrary objects."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _metrics(result):
    return {f: {k: v for k, v in m.items() if k != "edit_seconds_median"} for f, m in result["folds"].items()}


# a state after every edit, however quick the saves (what these checks of states and records assume)
EVERY_EDIT = "loop.state_overhead=0"


def _crashed_run(tmp_path, crash_at=2):
    with pytest.raises(scripted.Crash):
        _run(tmp_path, f"editor.crash_at={crash_at}", "editor.forget=true", EVERY_EDIT)


def _resume(tmp_path, crash_at=2):
    return _run(tmp_path, f"editor.crash_at={crash_at}", "editor.forget=true", EVERY_EDIT, "resume=true", calls=99)


def test_a_hostile_state_file_is_refused_without_running_it(tmp_path):
    _crashed_run(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"lines": 1, "last": "", "editor": Payload(marker)}, tmp_path / "r" / "state" / "fold0.pt")
    with pytest.raises(ResumeError, match="fold0.pt: not a readable state file"):
        _resume(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_state_file_is_one_line(tmp_path, damage):
    _crashed_run(tmp_path)
    path = tmp_path / "r" / "state" / "fold0.pt"
    path.write_bytes(path.read_bytes()[:40] if damage == "truncated" else b"not a state file at all")
    with pytest.raises(ResumeError, match="fold0.pt"):
        _resume(tmp_path)


def test_a_half_written_last_line_is_dropped_and_the_edit_redone(tmp_path):
    clean = _run(tmp_path / "clean", "editor.forget=true")
    _crashed_run(tmp_path)
    records = tmp_path / "r" / "edits.jsonl"
    with open(records, "a") as handle:  # the crash hit while a record was being written
        handle.write('{"type": "edit", "fold": 0, "ind')
    assert _metrics(_resume(tmp_path)) == _metrics(clean)


def test_records_cut_before_the_state_are_refused(tmp_path):
    """Removing the last whole record would redo an edit on top of its own saved state."""
    _crashed_run(tmp_path)
    records = tmp_path / "r" / "edits.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(lines[:-1]))
    with pytest.raises(ResumeError, match="covers 3 record lines but .* has 2"):
        _resume(tmp_path)


def test_a_damaged_middle_line_is_named_and_nothing_is_rewritten(tmp_path):
    _crashed_run(tmp_path)
    records = tmp_path / "r" / "edits.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"  # a line cut short in the middle of the file
    records.write_text("".join(lines))
    before = records.read_bytes()
    with pytest.raises(ResumeError, match=r"edits.jsonl:2: damaged record line"):
        _resume(tmp_path)
    assert records.read_bytes() == before


def test_a_line_of_no_known_kind_is_named(tmp_path):
    _crashed_run(tmp_path)
    records = tmp_path / "r" / "edits.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"type": "edit"', '"type": "edits"')
    records.write_text("".join(lines))
    with pytest.raises(ResumeError, match=r"edits.jsonl:2: damaged record line"):
        _resume(tmp_path)


def test_a_changed_covered_record_is_refused(tmp_path):
    _crashed_run(tmp_path)
    records = tmp_path / "r" / "edits.jsonl"
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    lines[-1]["success"] = not lines[-1]["success"]
    records.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ResumeError, match=rf"edits.jsonl:{len(lines)}: changed after it was written"):
        _resume(tmp_path)
    # with the chain recomputed to match (anyone can), the saved state still tells
    from benchmark.records import chained

    records.write_text("".join(json.dumps(x) + "\n" for x in chained(lines)))
    with pytest.raises(ResumeError, match="differs from the record the state"):
        _resume(tmp_path)


def test_the_csv_log_is_continued_and_a_finished_run_is_not_touched(tmp_path):
    _crashed_run(tmp_path)
    log = tmp_path / "r" / "logs" / "metrics.csv"
    before = log.read_text().splitlines()
    assert len(before) > 1
    _resume(tmp_path)
    after = log.read_text().splitlines()
    assert after[: len(before)] == before and len(after) > len(before)
    steps = [int(line.split(",")[0]) for line in after[1:] if line.split(",")[1] == "edit/success"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one row per edit, numbered on
    folder = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file() and p.name != ".lock"}
    _resume(tmp_path)  # finished: nothing to do
    assert {p: p.read_bytes() for p in folder} == folder


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    lock = RunLock(tmp_path / "r")
    try:
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            _run(tmp_path)
    finally:
        lock.release()
    _run(tmp_path)  # released: the run goes ahead


def test_a_failed_start_leaves_nothing_that_blocks_a_retry(tmp_path):
    with pytest.raises(UnknownNameError, match="no-such-model-anywhere"):
        _run(tmp_path, "model=no-such-model-anywhere")  # fails after the run folder was made
    result = _run(tmp_path)
    assert result["folds"]["0"]["E"] == 3


@pytest.mark.parametrize("run_id", ["../x", "/tmp/elsewhere", "a/b", ".."])
def test_run_ids_stay_inside_output_dir(tmp_path, capsys, run_id):
    code = main(["run", "editor=scripted", "data=handmade", f"output_dir={tmp_path}", f"run_id={run_id}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "must be one folder name" in err
    assert not (tmp_path.parent / "x").exists()


# SIGINT takes the same path as SIGTERM (another exit status): behind `slow` for the suite's time budget
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143),
                                          pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_stops_cleanly_and_resume_finishes_the_same(tmp_path, signum, code):
    program = ("import sys; from tests import scripted; from benchmark.cli import main\n"
               "with scripted.registered(): code = main(sys.argv[1:])\nsys.exit(code)")
    args = [sys.executable, "-c", program, "run", "editor=scripted", "data=handmade", "model=tiny-llama",
            f"output_dir={tmp_path}", "run_id=r", "loop.progress=false", "editor.forget=true", "editor.sleep=0.4"]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    records = tmp_path / "r" / "edits.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (records.exists() and records.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert "resume=true" in last and signal.Signals(signum).name in last
    assert not (tmp_path / "r" / "results.json").exists()
    resumed = _run(tmp_path, "editor.forget=true", "editor.sleep=0.4", "resume=true")
    clean = _run(tmp_path / "clean", "editor.forget=true", "editor.sleep=0.4")
    assert _metrics(resumed) == _metrics(clean)
    # the run's time is only stated where one process ran it all (its edits alone sleep 0.4 s each)
    assert "wall_seconds" not in resumed and clean["wall_seconds"] >= 0.4 * clean["metrics"]["E"]["mean"]


def test_a_run_stopped_between_a_folds_last_example_and_its_end_finishes_that_fold(tmp_path):
    """Found by the fault-injection test: every example of the last fold recorded, its fold_end
    not; the resumed run must still end that fold (it used to stream nothing and drop it)."""
    clean = _run(tmp_path / "clean", "editor.forget=true")
    _run(tmp_path, "editor.forget=true")
    records = tmp_path / "r" / "edits.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    assert [json.loads(x)["type"] for x in lines[-2:]] == ["fold_end", "run_end"]
    records.write_text("".join(lines[:-2]))
    (tmp_path / "r" / "results.json").unlink()
    resumed = _run(tmp_path, "editor.forget=true", "resume=true")
    assert _metrics(resumed) == _metrics(clean) and set(resumed["folds"]) == {"0", "1"}


def test_resume_compares_the_config_as_data_and_names_what_differs(tmp_path):
    _crashed_run(tmp_path)
    path = tmp_path / "r" / "config.yaml"
    written = path.read_text()
    body = [line for line in written.splitlines(keepends=True) if not line.startswith("# ")]
    path.write_text("# rewritten by hand, keys in another order\n" + "".join(reversed(_top_level_blocks(body))))
    with pytest.raises(ValueError, match=r"editor\.crash_at: 2 -> 5"):
        _resume(tmp_path, crash_at=5)
    assert _resume(tmp_path)["folds"]  # the same config written otherwise resumes


def _top_level_blocks(lines: list[str]) -> list[str]:
    blocks: list[str] = []
    for line in lines:
        if line[:1].isspace() and blocks:
            blocks[-1] += line
        else:
            blocks.append(line)
    return blocks


@pytest.mark.parametrize("planted", [".lock", "edits.jsonl", "config.yaml", "logs/metrics.csv", "results.json.tmp",
                                     "state", "run"])
def test_a_link_in_a_run_folder_is_refused_and_its_target_untouched(tmp_path, planted):
    """A run folder (copied, downloaded, shared) with a link where seqedit writes: refused in one
    line before anything is written, for a new run and a resume, and the link's target keeps its
    bytes; the whole folder a link is refused too."""
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    first = _run(tmp_path / "out")  # a finished run to resume
    assert first["metrics"]
    folder = tmp_path / "out" / "r"
    if planted == "run":
        (tmp_path / "elsewhere").mkdir()
        os.rename(folder, tmp_path / "elsewhere" / "r")
        folder.symlink_to(tmp_path / "elsewhere" / "r")
    else:
        target = folder / planted
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(outside)
    for resume in ("resume=true", "resume=false"):
        with pytest.raises(ValueError, match=r"link.*(will not|never) follow"):
            _run(tmp_path / "out", resume)
    assert outside.read_text() == "keep me\n"


def test_a_fifo_in_a_run_folder_is_refused(tmp_path):
    _run(tmp_path)
    os.mkfifo(tmp_path / "r" / "logs" / "extra")
    with pytest.raises(ValueError, match="not a regular file inside a run folder"):
        _run(tmp_path, "resume=true")


def test_appends_never_follow_a_link_swapped_in_after_the_check(tmp_path):
    """`open_no_follow` refuses a link at open time (O_NOFOLLOW), the race the folder check leaves."""
    from benchmark.records import RunFolderError, open_no_follow

    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    (tmp_path / "edits.jsonl").symlink_to(outside)
    with pytest.raises(RunFolderError, match="will not follow"):
        open_no_follow(tmp_path / "edits.jsonl", "a")
    assert outside.read_text() == "keep me\n"


@pytest.mark.parametrize("bad,named", [("editor.lr=1e999", "editor.lr=inf is not a finite number"),
                                       ("editor.max_steps=1e999", "editor.max_steps"),
                                       ("run_id=''", "run_id='': empty"), ("run_id=' '", "run_id=' ': empty")])
def test_impossible_values_are_one_line_before_anything_is_written(tmp_path, capsys, bad, named):
    """An infinity passes every `> 0` check and an empty run_id picked a derived folder: both are
    refused by name, exit 2, nothing written, and the error is the only line (a default run on the
    facts set says nothing about sizes it never asked for). Constrained FT's delta=inf (no bound) stays."""
    code = main(["run", "editor=ft_last", "data=facts", "model=tiny-llama", f"output_dir={tmp_path / 'out'}",
                 "loop.progress=false", bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert not (tmp_path / "out").exists()
    from benchmark.config import compose, instantiate

    assert instantiate(compose(["editor=constrained_ft", "editor.delta=inf"])).editor.delta == float("inf")


@pytest.mark.parametrize("damage", ["cut", "flipped", "foreign"])
def test_a_damaged_cached_initial_model_is_fitted_again(tmp_path, monkeypatch, capsys, damage):
    """A cached initial model cut short, with a changed byte, or holding another model's tensors
    (its checksum rewritten to match, so only the tensor check can tell) is never loaded: one line
    says so, the model is fitted again, and it is the model the first fit made."""
    from safetensors.torch import save_file

    from benchmark.build import build_data
    from benchmark.config import compose, instantiate
    from benchmark.init import prepare_initial_model
    from benchmark.models import build_model

    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    cfg = instantiate(compose(["model=tiny-llama", "data=facts", "init.epochs=1", "init.threads=1",
                               "data.train_subsample=50"]))
    data = build_data(cfg)
    first = build_model(cfg.model)
    weights = prepare_initial_model(first, data, cfg.model, cfg.init, progress=False)
    fitted = {k: v.clone() for k, v in first.model.state_dict().items()}
    raw = weights.read_bytes()
    if damage == "cut":
        weights.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":
        weights.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:
        save_file({"other.weight": torch.zeros(3, 3)}, str(weights))
        from benchmark.cache import file_sha256

        weights.with_name(weights.name + ".sha256").write_text(file_sha256(weights) + "\n")
    capsys.readouterr()
    again = build_model(cfg.model)
    prepare_initial_model(again, data, cfg.model, cfg.init, progress=False)
    assert "fitting it again" in capsys.readouterr().err
    state = again.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fitted.items())


@pytest.mark.parametrize("sig,after", [(signal.SIGTERM, 7.0), (signal.SIGINT, 7.0), (signal.SIGTERM, 3.0)])
def test_a_signal_outside_the_stream_exits_128_plus_n_with_one_line(tmp_path, sig, after):
    """SIGTERM while the initial model trains exited 0 (Lightning's SIGTERMException is a SystemExit
    with status 0) and SIGINT exited 1 with no word; now every phase, set-up (3 s) or the fit
    (7 s: the fit here), exits 128 + n with one line saying what is kept and how to continue, no traceback."""
    env = {**os.environ, "SEQEDIT_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "init", "model=tiny-llama", "data=facts",
                             "init.epochs=500", "init.threads=1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.startswith("seqedit:") or "Traceback" in x or "Error" in x]
    assert proc.returncode == 128 + sig, err[-500:]
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name} during `seqedit init`" in lines[0], lines
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_a_value_changed_in_a_middle_record_line_stops_a_resume(tmp_path):
    """Every record line is a link of a hash chain: changing a value in a middle line (still valid
    JSON), which no saved state covers by itself, is found and named by line on resume; an intact
    folder resumes to the same metrics."""
    first = _run(tmp_path, EVERY_EDIT)
    path = tmp_path / "r" / "edits.jsonl"
    lines = path.read_text().splitlines()
    middle = next(i for i, x in enumerate(lines) if json.loads(x)["type"] == "edit" and json.loads(x)["edited"])
    record = json.loads(lines[middle])
    record["success"] = not record["success"]
    lines[middle] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResumeError, match=rf"edits.jsonl:{middle + 1}: changed after it was written"):
        _run(tmp_path, EVERY_EDIT, "resume=true")
    record["success"] = not record["success"]
    lines[middle] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    assert _metrics(_run(tmp_path, EVERY_EDIT, "resume=true")) == _metrics(first)


def test_a_deleted_results_file_is_rebuilt_exactly_and_a_finished_run_prints_its_results(tmp_path, capsys):
    """results.json deleted from a finished run: resume=true writes it back byte for byte (wall time
    and every field, from the records' run_end line) and prints the results table, nulls included."""
    _run(tmp_path)
    path = tmp_path / "r" / "results.json"
    before = path.read_text()
    assert "wall_seconds" in json.loads(before)
    path.unlink()
    code = main(["run", "editor=scripted", "data=handmade", "model=tiny-llama", f"output_dir={tmp_path}",
                 "run_id=r", "loop.progress=false", "resume=true"])
    out = capsys.readouterr()
    assert code == 0 and path.read_text() == before
    assert "rebuilt from the records' run_end line" in out.err and "metric" in out.out and "SR" in out.out


@pytest.fixture
def small_disk(tmp_path):
    """A 24 KiB tmpfs (root may mount one; elsewhere the test is skipped), grown on request."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)

    yield disk, grow
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_mid_run_is_one_line_naming_the_file_and_the_run_resumes(small_disk, tmp_path, capsys):
    """The disk fills while the run writes: exit 2 with one line naming the file (no traceback), no
    temporary left; once there is room, resume=true ends with the metrics of a run that never
    stopped."""
    disk, grow = small_disk
    args = ["run", "editor=scripted", "data=handmade", "model=tiny-llama", "run_id=r", "loop.progress=false",
            "loop.state_overhead=0", "editor.equivalents_learned=2"]
    code = main([*args, f"output_dir={disk}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "No space left on device" in err[-1] and str(disk / "r") in err[-1], err
    assert not [e for e in err if "Traceback" in e]
    assert not list(disk.rglob("*.tmp"))
    grow()
    resumed = main([*args, f"output_dir={disk}", "resume=true"])
    assert resumed == 0
    clean = main([*args, f"output_dir={tmp_path / 'clean'}"])
    assert clean == 0
    got = json.loads((disk / "r" / "results.json").read_text())["folds"]
    want = json.loads((tmp_path / "clean" / "r" / "results.json").read_text())["folds"]
    assert _metrics({"folds": got}) == _metrics({"folds": want})


def test_a_read_only_cache_after_the_fit_keeps_the_fitted_model_for_the_run(small_disk, monkeypatch, capsys):
    """The initial model's cache cannot be written (here a read-only filesystem): one line says
    so and the run goes on with the model it fitted (the fit is not lost), instead of a traceback."""
    from benchmark.build import build_data
    from benchmark.config import compose, instantiate
    from benchmark.init import initial_weights, prepare_initial_model
    from benchmark.models import build_model

    disk, grow = small_disk
    grow()
    monkeypatch.setenv("SEQEDIT_CACHE", str(disk))
    cfg = instantiate(compose(["model=tiny-llama", "data=facts", "init.epochs=1", "init.threads=1",
                               "data.train_subsample=50"]))
    data = build_data(cfg)  # its own cached files written first
    adapter = build_model(cfg.model)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    prepare_initial_model(adapter, data, cfg.model, cfg.init, progress=False)
    assert "could not cache the initial model" in capsys.readouterr().err
    assert any(not torch.equal(v, before[k]) for k, v in adapter.model.state_dict().items())  # fitted
    assert not initial_weights(cfg.model, data.config, cfg.init).exists()
