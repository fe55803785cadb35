import json

import pytest

from benchmark.config import compose
from benchmark.run import run
from tests import scripted

pytestmark = pytest.mark.usefixtures("scripted")  # the test pieces, registered per test

def _run(tmp_path, *overrides, calls: int = 0):
    scripted.ScriptedEditor.calls = calls  # the crash switch fires when the count reaches crash_at
    cfg = compose(["editor=scripted", "data=handmade", "model=tiny-llama", f"output_dir={tmp_path}",
                   "run_id=r", "loop.progress=false", *overrides])
    return run(cfg)


def _edit_lines(tmp_path):
    lines = [json.loads(x) for x in (tmp_path / "r" / "edits.jsonl").read_text().splitlines()]
    return [x for x in lines if x["type"] == "edit"]


def test_metrics_on_a_hand_made_stream(tmp_path):
    result = _run(tmp_path, "loop.eval_every=2")
    fold0, fold1 = result["folds"]["0"], result["folds"]["1"]
    # fold 0: "a" is known, b c d are mistakes; each edit fixes 1 of 2 equivalents.
    assert (fold0["E"], fold0["N"], fold0["SR"], fold0["GR"], fold0["ER"]) == (3, 3, 1.0, 0.5, 1.0)
    assert fold0["GR_final"] == 0.5  # the final model on the edits' equivalents: still 1 of 2 each
    assert (fold0["TrainR"], fold0["TestR"]) == (1.0, 1.0)
    assert fold0["params_added"] == 7 * (8 + 3 + 3 + 3)  # known (prompts, probes) + edits, their equivalents, probes
    # fold 1: e and f are mistakes; f has no equivalents, so GR averages e's alone.
    assert (fold1["E"], fold1["N"], fold1["GR"], fold1["GR_final"]) == (2, 2, 0.5, 0.5)
    assert result["metrics"]["E"]["mean"] == 2.5
    assert result["metrics"]["E"]["std"] == pytest.approx(0.7071, abs=1e-4)


def test_modified_facts_metrics(tmp_path):
    """A_M on the streamed (modified) facts, A_F\\S on the unmodified ones, and their mean, all
    read on the facts' held-out probes (uid?), never on the prompts that were edited."""
    result = _run(tmp_path, "data.modified=true", "editor.forget=true")
    fold0 = result["folds"]["0"]
    # final knowledge: a (never edited) and d (the last edit); b, c forgotten -> A_M = 2/4
    assert fold0["A_M"] == 0.5
    assert fold0["A_FS"] == pytest.approx(1 / 3)  # t1 forgotten, t2 kept, t3 never known
    assert fold0["A_mean"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert "A_M" not in _run(tmp_path / "plain")["folds"]["0"]
    # an editor that memorises the edited prompts and nothing else: every edit holds (SR 1), yet
    # only the never-edited fact a is right on its probe
    memorised = _run(tmp_path / "memo", "data.modified=true", "editor.generalises=false")["folds"]["0"]
    assert (memorised["SR"], memorised["A_M"], memorised["A_FS"]) == (1.0, 0.25, 2 / 3)
    # old_kept: d answers its old object " no" until edited; an edit of d that changes nothing keeps it
    assert memorised["old_kept"] == 0.0
    kept = _run(tmp_path / "kept", "data.modified=true", "editor.fail=[d]")["folds"]["0"]
    assert (kept["old_kept"], kept["SR"]) == (0.25, 2 / 3)


def test_batch_mode_edits_every_fact_of_a_fold_at_once(tmp_path):
    """loop.mode=batch (Zhu et al.): one edit_batch per fold over all its facts, known ones too;
    each fact gets its record; A_M on the probes after the batch."""
    result = _run(tmp_path, "loop.mode=batch", "data.modified=true")
    lines = _edit_lines(tmp_path)
    assert [x["uid"] for x in lines if x["fold"] == 0] == ["a", "b", "c", "d"]
    assert all(x["edited"] and x["success"] for x in lines)
    assert [x["mistake"] for x in lines if x["fold"] == 0] == [False, True, True, True]
    assert lines[0]["info"]["batch_size"] == 4 and lines[0]["info"]["facts"] == 4
    assert scripted.ScriptedEditor.calls == 6  # every fact of both folds edited once
    fold0 = result["folds"]["0"]
    assert (fold0["E"], fold0["A_M"], fold0["A_FS"]) == (4, 1.0, 2 / 3)


def test_batch_mode_needs_an_editor_that_edits_batches(tmp_path):
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match="loop.mode=batch: editor ft_all edits one example at a time"):
        run(compose(["editor=ft_all", "data=handmade", "model=tiny-llama", f"output_dir={tmp_path}",
                     "loop.mode=batch"]))
    assert not (tmp_path / "r").exists() and not any(tmp_path.iterdir())


def test_loop_never_edits_when_the_model_is_right(tmp_path):
    _run(tmp_path)
    lines = _edit_lines(tmp_path)
    assert [x["uid"] for x in lines if not x["edited"]] == ["a"]
    assert all(x["edited"] == x["mistake"] for x in lines)


def test_forgetting_editor_lowers_er_and_trainr(tmp_path):
    result = _run(tmp_path, "editor.forget=true", "loop.eval_every=1")
    fold0 = result["folds"]["0"]
    assert fold0["SR"] == 1.0
    assert fold0["ER"] == pytest.approx(1 / 3)  # only the last of b, c, d survives
    # right after each edit 1 of its 2 equivalents holds (GR); at the end only d's (GR_final)
    assert (fold0["GR"], fold0["GR_final"]) == (0.5, pytest.approx(0.5 / 3))
    assert fold0["TrainR"] == pytest.approx((1 / 3) / (2 / 3))  # t1 forgotten
    evals = [json.loads(x) for x in (tmp_path / "r" / "edits.jsonl").read_text().splitlines()]
    evals = [x for x in evals if x["type"] == "eval" and x["fold"] == 0]
    assert [x["ER"] for x in evals] == [1.0, 0.5, pytest.approx(1 / 3)]


def test_results_file_holds_config_code_version_and_seed(tmp_path):
    _run(tmp_path, "seed=5")
    text = (tmp_path / "r" / "config.yaml").read_text()
    assert "# seed: 5" in text and "# code_version:" in text and "name: scripted" in text
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(results["metrics"]) >= {"SR", "GR", "ER", "TrainR", "TestR", "E", "N", "edit_seconds_median",
                                       "params_added"}


def test_the_editing_loop_runs_without_lightning(tmp_path):
    """`EditingLoop` is a plain class: stepped by hand over the stream, it writes the records a run
    through Lightning's test loop writes (times and hash links aside), typed as they are read."""
    from benchmark.loop import EditingLoop
    from benchmark.models.prefix_cache import PrefixCache
    from benchmark.record_types import EditRecord, EvalRecord, FoldEndRecord
    from benchmark.records import RunRecords
    from benchmark.run import _build_editor, _initial_accuracies, _plan, _stream

    through_lightning = _run(tmp_path, "editor.forget=true", "loop.eval_every=2")
    plan = _plan(compose(["editor=scripted", "data=handmade", "model=tiny-llama", f"output_dir={tmp_path}",
                          "run_id=plain", "loop.progress=false", "editor.forget=true", "loop.eval_every=2"]))
    scripted.ScriptedEditor.calls = 0
    editor = _build_editor(plan.run_cfg, plan.datamodule, plan.splits, plan.trained)
    cache = PrefixCache(editor.adapter, editor.edited_from(), 0)
    initial = _initial_accuracies(editor, plan.splits, plan.folds, plan.run_cfg.loop)
    records = RunRecords(tmp_path / "plain", "{}", 0, resume=False)
    stream = _stream(plan, {f: 0 for f in plan.folds})
    logged = []
    loop = EditingLoop(plan.splits, records, plan.run_cfg.loop, plan.run_cfg.seed, initial, len(stream), cache,
                       log=lambda metrics, step: logged.append((step, metrics)))
    for item in stream:
        loop.step(editor, item)
    loop.finish(editor)
    records.close()

    def comparable(lines: list[dict]) -> list[dict]:  # times and the hash chain's links aside
        out = [{k: v for k, v in x.items() if k not in {"seconds", "chain", "info"}} for x in lines
               if x["type"] != "run_end"]
        for x in out:
            x.get("metrics", {}).pop("edit_seconds_median", None)
        return out

    by_hand, lightning = ([json.loads(x) for x in (tmp_path / run / "edits.jsonl").read_text().splitlines()]
                          for run in ("plain", "r"))
    assert len(by_hand) == 6 + 2 + 2 and comparable(by_hand) == comparable(lightning)
    typed = records.records()
    assert [type(r) for r in typed[:3]] == [EditRecord, EditRecord, EditRecord]
    assert sum(isinstance(r, EvalRecord) for r in typed) == 2 and sum(isinstance(r, FoldEndRecord) for r in typed) == 2
    assert {f: r.metrics["SR"] for f, r in enumerate(x for x in typed if isinstance(x, FoldEndRecord))} == {
        int(f): m["SR"] for f, m in through_lightning["folds"].items()}
    assert logged and logged[-1][0] == 5  # five edits over the two folds, logged with the global step


def test_record_lines_round_trip_and_older_lines_parse():
    from benchmark.record_types import EditRecord, EvalRecord, parse

    edit = EditRecord(fold=1, index=3, uid="u", mistake=True, edited=True, success=True, gr=[1.0], seconds=0.5,
                      steps=7, params_added=12, info={"solved": True}, loc_tokens=[1.0], loc=[0.0])
    assert parse(json.loads(json.dumps(edit.line()))) == edit
    unedited = EditRecord(fold=0, index=0, uid="a").line()
    assert "info" not in unedited and unedited["success"] is None  # written as the loop always wrote them
    # a line of an older run (no loc, no params_added) and one with the hash chain's link
    assert parse({"type": "edit", "fold": 0, "edited": True, "success": True, "link": "x"}).loc is None
    assert parse({"type": "eval", "fold": 0, "edits": 2, "TrainR": 0.9, "TestR": None}) == EvalRecord(
        fold=0, edits=2, TrainR=0.9)
    with pytest.raises(ValueError, match="unknown type 'edits'"):
        parse({"type": "edits"})


def test_existing_run_is_not_overwritten(tmp_path):
    _run(tmp_path)
    with pytest.raises(FileExistsError):
        _run(tmp_path)


@pytest.mark.parametrize("crash_at,mode", [(0, "stream"), (2, "stream"), (4, "stream"), (2, "batch"),
                                           (5, "batch")])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, crash_at, mode):
    """In batch mode a crash inside a fold's batch redoes that batch whole, never half of it."""
    clean = _run(tmp_path / "clean", "editor.forget=true", f"loop.mode={mode}")
    with pytest.raises(scripted.Crash):
        _run(tmp_path / "crashed", f"editor.crash_at={crash_at}", "editor.forget=true", f"loop.mode={mode}")
    # the config must match to resume; crash_at is a test switch, so the crashed run keeps it
    resumed = _run(tmp_path / "crashed", f"editor.crash_at={crash_at}", "editor.forget=true", "resume=true",
                   f"loop.mode={mode}", calls=99)
    assert resumed["folds"] == {k: {**v, "edit_seconds_median": pytest.approx(v["edit_seconds_median"], abs=1)}
                                for k, v in clean["folds"].items()}
    lines = _edit_lines(tmp_path / "crashed")
    assert [(x["fold"], x["index"]) for x in lines] == [(0, i) for i in range(4)] + [(1, i) for i in range(2)]


def test_a_run_resumed_under_other_code_records_both_versions(tmp_path, monkeypatch, capsys):
    """config.yaml heads the results with the code version; a resume under another version adds
    a line (the records before it were made with the first), once per change."""
    from benchmark import records

    with pytest.raises(scripted.Crash):
        _run(tmp_path, "editor.crash_at=2")
    started = records.code_version()
    monkeypatch.setattr(records, "code_version", lambda: "0123abcd")
    _run(tmp_path, "editor.crash_at=2", "resume=true", calls=99)
    header = [line for line in (tmp_path / "r" / "config.yaml").read_text().splitlines() if line.startswith("# ")]
    assert header == ["# seed: 0", f"# code_version: {started}", "# resumed with code_version: 0123abcd"]
    assert f"ran with code {started}; resuming with 0123abcd" in capsys.readouterr().err
    records._note_resumed_code(tmp_path / "r" / "config.yaml")  # the same code again: nothing added
    assert (tmp_path / "r" / "config.yaml").read_text().count("code_version") == 2


def test_states_are_saved_within_their_share_of_the_time_and_a_resume_redoes_the_rest(tmp_path, monkeypatch):
    """loop.state_overhead: after a save that took 0.5 s the next waits 5 s (0.1, the default), so
    quick edits share one state; a crash then redoes every edit since it and ends as a clean run.
    0 saves after every edit."""
    import time

    from benchmark.records import RunRecords

    save, saved = RunRecords.save_state, []

    def slow(self, fold, state):
        time.sleep(0.5)
        saved.append(fold)
        return save(self, fold, state)

    monkeypatch.setattr(RunRecords, "save_state", slow)
    every = _run(tmp_path / "every", "editor.forget=true", "loop.state_overhead=0")
    assert saved == [0, 0, 0, 1, 1] and every["states_saved"] == 5
    saved.clear()
    sparse = _run(tmp_path / "sparse", "editor.forget=true")
    assert saved == [0] and sparse["states_saved"] == 1  # fold 0's first edit; none due after it
    assert sparse["folds"] == {k: {**v, "edit_seconds_median": pytest.approx(v["edit_seconds_median"], abs=1)}
                               for k, v in every["folds"].items()}
    with pytest.raises(scripted.Crash):
        _run(tmp_path / "crashed", "editor.crash_at=2", "editor.forget=true")
    resumed = _run(tmp_path / "crashed", "editor.crash_at=2", "editor.forget=true", "resume=true", calls=99)
    assert resumed["folds"] == {k: {**v, "edit_seconds_median": pytest.approx(v["edit_seconds_median"], abs=1)}
                                for k, v in every["folds"].items()}


def test_a_null_ratio_says_why():
    from benchmark.run import _null_metric_notes

    nan = float("nan")
    results = {"metrics": {"TrainR": {"mean": nan}, "TestR": {"mean": None}, "GR": {"mean": nan},
                           "SR": {"mean": 1.0}}}
    notes = _null_metric_notes(results, {"train_subsample": 0.0, "test": nan}, "edit")
    assert notes == ["TrainR is null: the initial model gets none of D_tr right (a ratio to 0)",
                     "TestR is null: D_test is empty", "GR is null: no edited example has equivalent inputs"]
    assert _null_metric_notes(results, {"train_subsample": 0.5, "test": 0.5}, "val")[1] == \
        "TestR is null: loop.split=val leaves D_test unread while tuning"
    assert _null_metric_notes({"metrics": {"TrainR": {"mean": 1.0}}}, {}, "edit") == []


@pytest.mark.parametrize("editor", ["tpatcher", "ft_kl_last", "constrained_ft editor.mix=fta"])
def test_an_editor_that_reads_the_memory_is_refused_an_empty_one(tmp_path, editor):
    from benchmark.config import ConfigError

    name, *extra = editor.split()
    with pytest.raises(ConfigError, match=f"editor {name} reads the memory pool .* lower data.train_subsample"):
        run(compose([f"editor={name}", *extra, "data=facts", "model=tiny-llama", "data.pool_size=0",
                     f"output_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_official_tpatcher_is_refused_without_d_val(tmp_path):
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match="reads D_val while editing, and loop.split=val streams it"):
        run(compose(["editor=tpatcher", "editor.recipe=official", "loop.split=val", "data=facts", "model=tiny-llama",
                     f"output_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())


def test_locality_right_after_each_edit_and_at_the_end(tmp_path):
    """Loc (EasyEdit): the share of f0's teacher-forced answers on an edit's locality pairs that
    the model still gives; Loc_rw: the share answered right or wrong as f0 did. c's pairs are t1
    (f0 right) and x2 (f0 wrong, no answer); a forgetting editor has lost t1 by then: both 1/2, and
    still at the end; an editor that forgets nothing keeps both; one that makes x2 answer
    " maybe" keeps it wrong (Loc_rw 1) but changes its answer (Loc 1/2)."""
    forgetful = _run(tmp_path / "forget", "editor.forget=true")["folds"]
    assert (forgetful["0"]["Loc"], forgetful["0"]["Loc_final"]) == (0.5, 0.5)
    assert (forgetful["0"]["Loc_rw"], forgetful["0"]["Loc_rw_final"]) == (0.5, 0.5)
    assert "Loc" not in forgetful["1"]  # no example of fold 1 has locality pairs
    kept = _run(tmp_path / "keep")["folds"]["0"]
    assert (kept["Loc"], kept["Loc_final"], kept["Loc_rw"], kept["Loc_rw_final"]) == (1.0, 1.0, 1.0, 1.0)
    edits = [x for x in _edit_lines(tmp_path / "keep") if x["uid"] == "c"]
    assert edits[0]["loc"] == edits[0]["loc_tokens"] == [1.0, 1.0]
    changed = _run(tmp_path / "changed", "editor.side_effect=x2")["folds"]["0"]
    assert (changed["Loc"], changed["Loc_final"], changed["Loc_rw"], changed["Loc_rw_final"]) == (0.5, 0.5, 1.0, 1.0)
