"""Build data, model, editor, editing loop and Trainer from a config; run the folds; write results.
Reads top to bottom, like a Lightning recipe."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from benchmark.build import build_data, build_editor
from benchmark.config import ConfigError, RunConfig, instantiate, to_yaml
from benchmark.csvlog import AppendingCSVLogger
from benchmark.distributed import gather, merge_initial, merge_lines, process_rank
from benchmark.editor_training import load_trained_state
from benchmark.init import prepare_initial_model
from benchmark.loop import (
    EditingLoop,
    SequentialEditingCallback,
    StreamItem,
    example_scores,
    locality_predictions,
    locality_scores,
    probe_accuracy,
    seed_all,
    stop_on_signals,
)
from benchmark.metrics import INTERVAL_METHOD, aggregate, fold_intervals, folds_differ, mean
from benchmark.models import build_model
from benchmark.models.prefix_cache import PrefixCache
from benchmark.record_types import RunEndRecord, edits_in, fold_ends, parse_all
from benchmark.records import ResumeError, RunLock, RunRecords, check_run_folder, config_identity
from benchmark.registry import EDITORS
from benchmark.types import EditSplits
from data.base import EditDataModule
from editors.base import Editor


def default_run_id(cfg: DictConfig) -> str:
    """editor-data-model-seed-hash; `resume` is left out so a resumed run finds its folder."""
    identity = json.dumps(config_identity(to_yaml(cfg)), sort_keys=True, default=str)
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    return f"{cfg.editor.name}-{cfg.data.name}-{Path(str(cfg.model.name)).name}-s{cfg.seed}-{digest}"


def run_folder(run_cfg: RunConfig, cfg: DictConfig) -> Path:
    """output_dir/run_id; a run id is one folder name, so a run never writes outside output_dir."""
    run_id = run_cfg.run_id or default_run_id(cfg)
    if Path(run_id).is_absolute() or len(Path(run_id).parts) != 1 or run_id in (".", "..") or "\\" in run_id:
        raise ConfigError(f"run_id={run_id!r}: must be one folder name (no '/', '..' or absolute path); "
                          "the folder is made inside output_dir")
    return Path(run_cfg.output_dir) / run_id


def _check_editor_data(editor_class, run_cfg: RunConfig, splits: EditSplits) -> None:
    """An editor that reads the memory pool or D_val is refused an empty one, naming what fixes it."""
    given = splits.for_editor()
    name = run_cfg.editor.name
    if editor_class.traits.reads_pool(run_cfg.editor) and not given.pool:
        raise ConfigError(f"editor {name} reads the memory pool (D'train outside D_tr) and this data leaves it "
                          f"empty ({len(splits.train)} D'train examples, {len(splits.train_subsample)} in D_tr): "
                          "lower data.train_subsample, or use more data")
    if editor_class.traits.reads_val(run_cfg.editor) and not given.val:
        why = "loop.split=val streams it" if run_cfg.loop.split == "val" else "this data has none"
        raise ConfigError(f"editor {name} with these settings reads D_val while editing, and {why}")


def _plan_resume(records: RunRecords, folds: list[int]) -> dict[int, int]:
    """Verify the records against the saved states and cut them back to what the states cover;
    return {fold: first index to run}."""
    typed = records.records()
    ended = set(fold_ends(typed))
    open_folds = [f for f in folds if f not in ended and any(getattr(r, "fold", None) == f for r in typed)]
    if len(open_folds) > 1:
        raise ResumeError(f"{records.path}: folds {open_folds} are all half done; cannot tell which state is current")
    start = {f: 0 for f in folds if f not in ended}
    if open_folds:
        fold = open_folds[0]
        state = records.load_state(fold)
        first = next(i for i, r in enumerate(typed) if getattr(r, "fold", None) == fold)
        records.truncate(state["lines"] if state and state["lines"] > first else first)
        done = [r.index for r in edits_in(records.records(), fold, edited_only=False)]
        start[fold] = max(done) + 1 if done else 0
    return start


def _initial_accuracies(editor: Editor, splits: EditSplits, folds: list[int], loop) -> dict[str, Any]:
    test = splits.test[: loop.test_limit] if loop.test_limit else splits.test
    mistakes = {}
    for f in folds:
        stream = loop.stream(splits.folds[f])
        scores = editor.scores([e.prompt for e in stream], [e.target for e in stream])
        mistakes[str(f)] = sum(s < 1 for s in scores)
    items = {"train_subsample": example_scores(editor, splits.train_subsample), "test": example_scores(editor, test)}
    out = {**{name: mean(scores) for name, scores in items.items()}, "mistakes": mistakes, "items": items}
    locality = {str(f): locality_scores(editor, loop.stream(splits.folds[f])) for f in folds}
    if any(pairs for fold in locality.values() for pairs in fold):  # Loc: f0's answers on each pair
        out["locality"] = locality  # right/wrong (Loc_rw)
        out["locality_tokens"] = {str(f): locality_predictions(editor, loop.stream(splits.folds[f])) for f in folds}
    if splits.unmodified:
        out["unmodified"] = probe_accuracy(editor, splits.unmodified)
    return out


def _fold_indices(run_cfg: RunConfig, splits: EditSplits) -> list[int]:
    folds = run_cfg.loop.folds if run_cfg.loop.folds is not None else list(range(len(splits.folds)))
    bad = [f for f in folds if not 0 <= f < len(splits.folds)]
    if bad:
        raise ConfigError(f"loop.folds: {bad} out of range; the data has {len(splits.folds)} folds "
                          f"(0..{len(splits.folds) - 1})")
    return folds


def _finished(records: RunRecords, folds: list[int]) -> bool:
    typed = records.records()
    return set(folds) <= set(fold_ends(typed)) and ((records.dir / "results.json").exists()
                                                    or any(isinstance(r, RunEndRecord) for r in typed))


def _finished_results(records: RunRecords) -> dict[str, Any]:
    """A finished run's results: its results.json, or, where that was deleted, the copy its last
    record line holds (written with it, so the rebuilt file is the same, wall time included)."""
    path = records.dir / "results.json"
    if not path.exists():
        end = next(r for r in reversed(records.records()) if isinstance(r, RunEndRecord))
        RunRecords.write_json_to(records.dir, "results.json", end.results)
        print(f"seqedit: {path} rebuilt from the records' run_end line", file=sys.stderr)
    return json.loads(path.read_text())


@dataclass
class _Plan:
    """A run, resolved and checked: everything decided before anything slow or written."""

    run_cfg: RunConfig
    cfg: DictConfig  # the resolved config, as results and resume checks store it
    datamodule: EditDataModule
    splits: EditSplits
    folds: list[int]  # this process's folds
    trained: Any  # the editor's training-phase state, if it has one
    run_dir: Path
    rank: int
    world: int

    @property
    def folder(self) -> Path:  # where this process records (its own under DDP)
        return self.run_dir if self.world == 1 else self.run_dir / "ranks" / str(self.rank)


def run(cfg: DictConfig) -> dict[str, Any]:
    """One run: every check that can fail runs before the slow steps (initial model, editing), and
    the run folder is locked while it is written."""
    plan = _plan(cfg)
    check_run_folder(plan.run_dir)  # nothing in it is a link, before anything is read or written
    lock = RunLock(plan.folder)
    try:
        records = RunRecords(plan.folder, to_yaml(plan.cfg), plan.run_cfg.seed, plan.run_cfg.resume)
        try:
            if plan.run_cfg.resume and plan.world == 1 and _finished(records, plan.folds):
                print(f"seqedit: {plan.run_dir} is finished; nothing to resume", file=sys.stderr)
                return _finished_results(records)
            start = _plan_resume(records, plan.folds) if plan.run_cfg.resume else {f: 0 for f in plan.folds}
            return _edit_folds(plan, records, start)
        finally:
            records.close()
    finally:
        lock.release()


def _plan(cfg: DictConfig) -> _Plan:
    run_cfg = instantiate(cfg)
    # from here the config is the one that runs: every field a recipe or dataset resolves is filled in,
    # so results, run ids and resume checks name the real settings
    cfg = OmegaConf.structured(run_cfg)
    seed_all(run_cfg.seed)
    datamodule = build_data(run_cfg)
    for notice in datamodule.notices:  # every fallback and layout, before anything slow
        print(f"seqedit: data: {notice}", file=sys.stderr)
    splits = streamed_splits(datamodule, run_cfg.loop.split)
    folds = _fold_indices(run_cfg, splits)
    editor_class = EDITORS.get(run_cfg.editor.name).target
    _check_mode(editor_class, run_cfg)
    _check_editor_data(editor_class, run_cfg, splits)
    # a missing training phase stops the run before anything is written
    trained = load_trained_state(run_cfg) if editor_class.traits.training else None
    run_dir = run_folder(run_cfg, cfg)
    rank, world = process_rank(run_cfg.trainer)
    if world > 1:  # this process's share of the folds, recorded in its own folder
        if not run_cfg.resume and (run_dir / "edits.jsonl").exists():
            raise FileExistsError(f"{run_dir} already holds records; pass resume=true or another run_id")
        folds = folds[rank::world]
    return _Plan(run_cfg, cfg, datamodule, splits, folds, trained, run_dir, rank, world)


def _check_mode(editor_class, run_cfg: RunConfig) -> None:
    if run_cfg.loop.mode == "batch" and not editor_class.traits.batches:
        batch_editors = ", ".join(n for n in EDITORS.names() if EDITORS.get(n).target.traits.batches)
        raise ConfigError(f"loop.mode=batch: editor {run_cfg.editor.name} edits one example at a time; "
                          f"batch editors: {batch_editors}")


def streamed_splits(datamodule: EditDataModule, split: str) -> EditSplits:
    """The splits a run works with: as read (`loop.split=edit`), or for tuning (`val`) with D_val's
    folds streamed instead of D_edit's, D_test left unread and D_val out of the editor's hands."""
    if split == "edit":
        return datamodule.splits
    return replace(datamodule.splits, folds=datamodule.val_stream(), test=[], val=[])


def _build_editor(run_cfg: RunConfig, datamodule: EditDataModule, splits: EditSplits, trained) -> Editor:
    adapter = build_model(run_cfg.model)
    if adapter.task != splits.task:
        raise ValueError(f"model {run_cfg.model.name} ({adapter.family}) answers {adapter.task}, "
                         f"but data {run_cfg.data.name} is a {splits.task} task")
    datamodule.check_model(adapter.family)
    # the editor is built first, so that its checks against the model (a layer out of range, say)
    # fail before the initial model's training; it changes nothing until it edits
    editor = build_editor(run_cfg, adapter)
    prepare_initial_model(adapter, datamodule, run_cfg.model, run_cfg.init, run_cfg.loop.progress)
    if trained is not None:
        editor.load_trained(trained)
    editor.prepare(splits.for_editor())  # what an editor may learn from; never D_tr, D_test
    return editor


def _loggers(run_cfg: RunConfig, run_dir: Path, resume_step: int | None) -> list:
    loggers = [AppendingCSVLogger(run_dir, resume_step)]
    if run_cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("logger.wandb=true needs the wandb package: pip install -e '.[wandb]'") from None
        # a fixed id per run folder: a resumed run continues the same W&B history
        run_key = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        loggers.append(WandbLogger(project=run_cfg.logger.project, name=run_dir.name, save_dir=str(run_dir),
                                   offline=run_cfg.logger.wandb_mode == "offline", id=run_key, resume="allow"))
    return loggers


def _edit_folds(plan: _Plan, records: RunRecords, start: dict[int, int]) -> dict[str, Any]:
    run_cfg, began = plan.run_cfg, time.perf_counter()
    editor = _build_editor(run_cfg, plan.datamodule, plan.splits, plan.trained)
    # the loop's scoring reruns only the blocks the editor declares it changes (exact; checked at each use)
    cache = PrefixCache(editor.adapter, editor.edited_from(), run_cfg.model.eval_cache_mb * 2**20)
    initial = _initial(plan, records, editor, cache)
    stream = _stream(plan, start)
    done_edits = len(edits_in(records.records()))
    loop = EditingLoop(plan.splits, records, run_cfg.loop, run_cfg.seed, initial, len(stream), cache)
    loop.global_step = done_edits
    loggers = _loggers(run_cfg, plan.run_dir, done_edits if run_cfg.resume else None)
    if stream or plan.world > 1:  # under DDP every process must enter test(): it starts the others
        _test(run_cfg, editor, loop, loggers, stream)
    results = _results(plan, records, initial, editor, loop.state_bytes, loop.global_step - done_edits)
    results["eval_cache"] = {"edited_from": cache.first, "mib": round(cache.bytes / 2**20, 1), **cache.stats}
    if not any(start.values()):  # a resumed run's time would be its last part's only
        results["wall_seconds"] = round(time.perf_counter() - began, 1)
    _log_final(loggers, results, loop.global_step)
    end = RunEndRecord(results=results)  # in the records too: a deleted results.json is rebuilt
    if plan.world == 1:
        records.append(end)
    elif plan.rank == 0:  # the merged file of every rank's records
        RunRecords.append_merged(plan.run_dir, end)
    if plan.rank == 0:
        RunRecords.write_json_to(plan.run_dir, "results.json", results)
    return results


def _initial(plan: _Plan, records: RunRecords, editor: Editor, cache: PrefixCache) -> dict[str, Any]:
    """The initial model's accuracies (N and the ratios' denominators), read back on resume."""
    path = records.dir / "initial.json"
    if plan.run_cfg.resume and path.exists():
        return json.loads(path.read_text())
    with cache.lent():
        initial = _initial_accuracies(editor, plan.splits, plan.folds, plan.run_cfg.loop)
    records.write_json("initial.json", initial)
    return initial


def _stream(plan: _Plan, start: dict[int, int]) -> list[StreamItem]:
    stream = []
    for f in (f for f in plan.folds if f in start):
        examples = plan.run_cfg.loop.stream(plan.splits.folds[f])
        rest = [StreamItem(f, i, ex) for i, ex in enumerate(examples) if i >= start[f]]
        # a fold whose every example was recorded but whose end was not (stopped just before it)
        stream += rest or [StreamItem(f, start[f], None)]
    return stream


def _test(run_cfg: RunConfig, editor: Editor, loop: EditingLoop, loggers: list, stream: list[StreamItem]) -> None:
    """The stream through Lightning's test loop; the loop, behind its callback, owns every example."""
    trainer = L.Trainer(accelerator=run_cfg.trainer.accelerator, devices=run_cfg.trainer.devices,
                        num_nodes=run_cfg.trainer.num_nodes, strategy=run_cfg.trainer.strategy, logger=loggers,
                        callbacks=[SequentialEditingCallback(loop)], inference_mode=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    with stop_on_signals(loop):
        try:
            trainer.test(editor, dataloaders=DataLoader(stream, batch_size=None, collate_fn=lambda x: x),
                         verbose=False)
        except SIGTERMException:  # Lightning's own SIGTERM stop (a SystemExit with status 0)
            loop.interrupt(editor, signal.SIGTERM)


def _results(plan: _Plan, records: RunRecords, initial: dict, editor: Editor, state_bytes: list[int],
             made: int) -> dict[str, Any]:
    """Metrics over the folds (every rank's under DDP), with what a reader needs to trust them:
    the split streamed, why a metric is null, state bytes per edit, prompts cut."""
    if plan.world > 1:
        results = _gather_ranks(records, initial, plan.run_dir, to_yaml(plan.cfg), plan.rank,
                                plan.world)
    else:
        results = summarize(records)
    results["split"] = plan.run_cfg.loop.split  # edit: D_edit streamed (report); val: D_val streamed (tuning)
    notes = _null_metric_notes(results, initial, plan.run_cfg.loop.split)
    if notes:
        results["notes"] = notes
        for note in notes:
            print(f"seqedit: {note}", file=sys.stderr)
    if state_bytes and made:  # what resumability costs: state bytes written per edit (by this process)
        results["state_bytes_per_edit"] = round(sum(state_bytes) / made)
        results["states_saved"] = len(state_bytes)
    truncated = len(getattr(editor.adapter, "truncated_prompts", ()))
    if truncated:
        results["prompts_truncated"] = truncated
        print(f"seqedit: {truncated} prompts were longer than the model's window and lost their start",
              file=sys.stderr)
    return results


def _log_final(loggers: list, results: dict[str, Any], step: int) -> None:
    final = {f"final/{k}": v["mean"] for k, v in results["metrics"].items() if v["mean"] is not None}
    for logger in loggers:
        logger.log_metrics(final, step=step)  # what a W&B sweep optimises
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()  # else the next run in this process (a sweep trial) reuses it
    loggers[0].close()


def _null_metric_notes(results: dict[str, Any], initial: dict[str, Any], split: str) -> list[str]:
    """Why a metric is null, in words: a ratio to an initial accuracy of 0, a split not read."""
    metrics, notes = results["metrics"], []

    def missing(name: str) -> bool:
        value = metrics.get(name, {}).get("mean", 0.0)
        return value is None or (isinstance(value, float) and math.isnan(value))

    for name, key, what in (("TrainR", "train_subsample", "D_tr"), ("TestR", "test", "D_test")):
        if not missing(name):
            continue
        accuracy = initial.get(key)
        if name == "TestR" and split == "val":
            notes.append("TestR is null: loop.split=val leaves D_test unread while tuning")
        elif accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
            notes.append(f"{name} is null: {what} is empty")
        else:
            notes.append(f"{name} is null: the initial model gets none of {what} right (a ratio to 0)")
    if missing("GR"):
        notes.append("GR is null: no edited example has equivalent inputs")
    return notes


def _gather_ranks(records: RunRecords, initial: dict, run_dir: Path, config_yaml: str, rank: int,
                  world: int) -> dict[str, Any]:
    """Rank 0 writes the records of every rank as one run; every rank returns the whole results."""
    parts = gather((records.lines, initial), world)
    lines = merge_lines([p[0] for p in parts])
    if rank == 0:
        RunRecords.write_merged(run_dir, config_yaml, records.header, lines)
        RunRecords.write_json_to(run_dir, "initial.json", merge_initial([p[1] for p in parts]))
    return summarize_lines(lines, run_dir)


def summarize(records: RunRecords) -> dict[str, Any]:
    return summarize_lines(records.lines, records.dir)


def summarize_lines(lines: list[dict], run_dir: Path) -> dict[str, Any]:
    typed = parse_all(lines)
    ends = fold_ends(typed)
    per_fold = {f: r.metrics for f, r in ends.items()}
    folds = {f: (edits_in(typed, f), r.final, r.metrics) for f, r in ends.items()}
    return {"run_dir": str(run_dir), "folds": {str(k): v for k, v in sorted(per_fold.items())},
            "metrics": aggregate(per_fold, fold_intervals(folds), folds_differ(folds)), "interval": INTERVAL_METHOD}
