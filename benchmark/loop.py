"""The sequential-editing loop (T-Patcher, Sec. 3), written once for every editor.

`EditingLoop` owns the stream: for each example it asks the current model; only on a mistake it
calls `editor.edit`, then records SR at once and GR on the equivalents. Every `eval_every` edits
and at the end of a fold it records ER, TrainR and TestR. Each fold starts from the initial model.
The editor only edits and answers. It is a plain class, readable and testable without Lightning;
`SequentialEditingCallback` forwards Lightning's test hooks to it (one stream example per batch).

`loop.mode=batch` is Zhu et al.'s setting instead: the fold's facts are edited at once (with all
their training forms, for a fixed number of epochs), then scored as a stream would be.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.config import LoopConfig
from benchmark.metrics import fold_metrics, mean, ratio
from benchmark.models.prefix_cache import PrefixCache
from benchmark.record_types import EditRecord, EvalRecord, FoldEndRecord, edits_in
from benchmark.records import RunRecords
from benchmark.signals import handling_signals
from benchmark.types import EditSplits, Example
from editors.base import Editor


@dataclass
class StreamItem:
    fold: int
    index: int
    example: Example | None  # None: nothing left to stream in the fold, only its end to record


def edit_seed(seed: int, fold: int, index: int) -> int:
    """Every edit gets its own seed, so a resumed run repeats an interrupted edit exactly."""
    return (seed * 1_000_003 + fold * 10_007 + index) % (2**31)


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the stream between two examples; records and state agree."""

    def __init__(self, signum: int, edits: int):
        self.signum, self.edits = signum, edits
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after {edits} edits; the records and editor state are saved; "
                         "continue with the same command and resume=true")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def stop_on_signals(loop: EditingLoop):
    """SIGINT/SIGTERM ask the loop to stop after the example in progress (its edit is finished and
    recorded, so nothing half-done is written); a second signal stops at once, which is as safe
    (records are fsync'ed, the state is renamed into place) but redoes that edit on resume."""

    def handler(signum, _frame):
        if loop.stop_requested:
            print(f"seqedit: {signal.Signals(signum).name} again: stopping now; resume=true redoes the edit "
                  "in progress", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        loop.stop_requested = signum
        print(f"seqedit: {signal.Signals(signum).name}: stopping after the example in progress",
              file=sys.stderr, flush=True)

    with handling_signals(handler):
        yield


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def example_scores(editor: Editor, examples: list[Example], targets: list[Any] | None = None) -> list[float]:
    if not examples:
        return []
    return editor.scores([e.prompt for e in examples], targets or [e.target for e in examples])


def accuracy(editor: Editor, examples: list[Example], targets: list[Any] | None = None) -> float:
    return mean(example_scores(editor, examples, targets))  # NaN where there is no example


def probe_scores(editor: Editor, facts: list[Example]) -> list[float]:
    """Scores on the facts' held-out probes, every probe one statement (Zhu et al.'s test set)."""
    prompts = [p for e in facts for p in e.probes]
    return editor.scores(prompts, [e.target for e in facts for _ in e.probes]) if prompts else []


def probe_accuracy(editor: Editor, facts: list[Example]) -> float:
    return mean(probe_scores(editor, facts))  # NaN where no fact has a probe


def grouped(answer, groups: list[list[tuple[str, Any]]]) -> list[list[Any]]:
    """`answer(prompts, answers)` (an editor's `scores` or `predictions`) on every (prompt, answer)
    pair of every group, in one batch, grouped back."""
    pairs = [(i, p, a) for i, group in enumerate(groups) for p, a in group]
    values = answer([p for _, p, _ in pairs], [a for _, _, a in pairs]) if pairs else []
    out: list[list[Any]] = [[] for _ in groups]
    for (i, _, _), value in zip(pairs, values):
        out[i].append(value)
    return out


def grouped_scores(editor: Editor, groups: list[list[tuple[str, Any]]]) -> list[list[float]]:
    return grouped(editor.scores, groups)


def locality_scores(editor: Editor, examples: list[Example]) -> list[list[float]]:
    """Right/wrong on each example's locality pairs (prompt, answer)."""
    return grouped(editor.scores, [e.locality for e in examples])


def locality_predictions(editor: Editor, examples: list[Example]) -> list[list[list[int]]]:
    """The teacher-forced answers on each example's locality pairs (EasyEdit's locality reading)."""
    return grouped(editor.predictions, [e.locality for e in examples])


def counterfact_items(editor: Editor, past: list[Example]) -> dict[str, list[float]]:
    """ROME's CounterFact comparison of the new object with the true one on the final model
    (kmeng01/rome experiments/py/eval_utils_counterfact.py `test_batch_prediction`, summarised by
    experiments/summarize.py): per edited record, the share of its prompts where the new object is
    likelier (mean log-probability per token) than the true one, and the mean difference of those
    probabilities, on the edit prompt (ES, EM), its paraphrases (PS, PM) and its neighbourhood
    prompts, where the true object should stay likelier (NS, NM). Neighbourhood prompts are the
    locality pairs answered by the record's true object (CounterFact's); records without a true
    object, and editors without answer probabilities, give none."""
    records = [e for e in past if e.original_target is not None]
    groups = {"rewrite": [[e.prompt] for e in records], "paraphrase": [list(e.equivalents) for e in records],
              "neighbourhood": [[p for p, a in e.locality if a == e.original_target] for e in records]}
    prompts = [p for group in groups.values() for ps in group for p in ps]
    owners = [e for group in groups.values() for e, ps in zip(records, group) for _ in ps]
    new = editor.answer_nll(prompts, [e.target for e in owners]) if prompts else None
    if new is None:
        return {}
    true = editor.answer_nll(prompts, [e.original_target for e in owners])
    out, at = {}, 0
    for (kind, group), (score, magnitude) in zip(groups.items(), (("ES", "EM"), ("PS", "PM"), ("NS", "NM"))):
        sign = -1.0 if kind == "neighbourhood" else 1.0  # the true object should win there
        for ps in group:
            pairs = list(zip(new[at : at + len(ps)], true[at : at + len(ps)]))
            at += len(ps)
            if pairs:
                out.setdefault(score, []).append(mean([float(sign * (t - n) > 0) for n, t in pairs]))
                out.setdefault(magnitude, []).append(mean([sign * (math.exp(-n) - math.exp(-t)) for n, t in pairs]))
    return out


def kept(now: list[float], before: list[float]) -> list[float]:
    """Per locality pair: 1 where the model is right or wrong on it as the initial model was."""
    return [float(a == b) for a, b in zip(now, before)]


def tokens_kept(now: list[list[int]], before: list[list[int]]) -> list[float]:
    """Per locality pair: the share of the initial model's teacher-forced answers that the model
    still gives (EasyEdit's Loc: mean of pre == post over the answer's tokens)."""
    return [sum(a == b for a, b in zip(n, b4)) / len(b4) for n, b4 in zip(now, before)]


def shown_to_editor(example: Example) -> Example:
    """The example as an editor gets it: without its equivalents (GR), locality pairs (Loc) and
    held-out probes (A_M), which are measured, so kept out of its reach by construction."""
    return replace(example, equivalents=[], locality=[], probes=[])


class EditingLoop:
    """The stream of one run, example by example: `step` takes the next stream item (starting and
    ending folds as the item's fold changes), `finish` ends the last fold, `interrupt` stops between
    two examples with the state saved. `log` receives the logged values and the global step."""

    def __init__(self, splits: EditSplits, records: RunRecords, loop: LoopConfig, seed: int,
                 initial: dict[str, Any], total: int, cache: PrefixCache,
                 log: Callable[[dict[str, float], int], None] | None = None):
        self.splits = splits
        self.cache = cache  # lent to the model for the loop's own scoring, never during an edit
        self.records = records
        self.loop = loop
        self.seed = seed
        self.initial = initial  # accuracies of f0 and its mistakes per fold
        self.log = log
        self.test_set = splits.test[: loop.test_limit] if loop.test_limit else splits.test
        self.fold: int | None = None
        self.edits: list[EditRecord] = []  # this fold's records of edited examples
        self.bar = tqdm(total=total, desc="editing", disable=not loop.progress, dynamic_ncols=True)
        self.global_step = 0
        self.stop_requested = 0  # the signal that asked the stream to stop
        self.state_bytes: list[int] = []  # size of each saved editor state
        self.state_seconds = 0.0  # the last save's duration (the next waits for it / loop.state_overhead)
        self.last_state = 0.0  # when the last state of this fold was saved (or the fold started)
        self.batch_done = False

    # -- the stream ------------------------------------------------------------------------------
    def step(self, editor: Editor, item: StreamItem) -> None:
        if self.stop_requested:
            self.interrupt(editor, self.stop_requested)
        if item.fold != self.fold:
            self._end_fold(editor)
            self._start_fold(editor, item.fold)
        if item.example is not None:
            if self.loop.mode == "batch":
                self._process_batch(editor, item)
            else:
                self._process(editor, item)
            self.bar.update(1)

    def finish(self, editor: Editor) -> None:
        self._end_fold(editor)
        self.bar.close()

    def interrupt(self, editor: Editor, signum: int) -> None:
        """Stop between two examples: the state is saved to cover every record, then the run ends."""
        if self.fold is not None and self.edits and self.loop.save_state:
            self._save_state(editor, self.fold)
        raise RunInterrupted(signum, self.global_step)

    # -- fold boundaries -------------------------------------------------------------------------
    def _start_fold(self, editor: Editor, fold: int) -> None:
        self.fold = fold
        editor.reset()
        state = self.records.load_state(fold)
        done = edits_in(self.records.records(), fold, edited_only=False)
        if state is not None and done:  # resuming this fold: the records were cut to the state
            editor.load_edit_state(state["editor"])
        self.edits = [r for r in done if r.edited]
        self.batch_done = bool(done)  # batch mode: a fold's batch is recorded whole or not at all
        self.last_state = time.perf_counter()

    def _end_fold(self, editor: Editor) -> None:
        if self.fold is None:
            return
        began = time.perf_counter()
        with self.cache.lent():
            final = self._final(editor)
        metrics = fold_metrics(self.edits, final, self.initial)
        self.records.append(FoldEndRecord(fold=self.fold, final=final, metrics=metrics, editor=editor.fold_report(),
                                          seconds=time.perf_counter() - began))
        self._log({f"fold_end/{k}": v for k, v in metrics.items()})
        self.fold = None

    def _final(self, editor: Editor) -> dict[str, Any]:
        """The final model's accuracies over the fold, D_tr and D_test (and Loc, A_M, A_F\\S), and in
        `items` the per-example scores behind them (f0's too for the ratios), which the metrics'
        intervals resample."""
        fold_examples = self.loop.stream(self.splits.folds[self.fold])
        past = [fold_examples[r.index] for r in self.edits]
        items = {"past_edits": example_scores(editor, past),
                 "train_subsample": example_scores(editor, self.splits.train_subsample),
                 "test": example_scores(editor, self.test_set)}
        final = {
            "initial_mistakes": self.initial["mistakes"][str(self.fold)],
            "params_added": editor.params_added(),
            "base_params": editor.adapter.parameter_count(),
        }
        if any(e.locality for e in fold_examples):  # Loc of the final model over the fold's locality pairs
            fold = str(self.fold)
            items["locality"] = [k for now, was in zip(locality_predictions(editor, fold_examples),
                                                       self.initial["locality_tokens"][fold])
                                 for k in tokens_kept(now, was)]
            items["locality_rw"] = [k for now, was in zip(locality_scores(editor, fold_examples),
                                                          self.initial["locality"][fold])
                                    for k in kept(now, was)]
        replaced = [e for e in fold_examples if e.original_target is not None]
        if replaced:  # modified facts: does the final model still give the old (true) object?
            items["old_kept"] = example_scores(editor, replaced, [e.original_target for e in replaced])
        if self.splits.unmodified:  # Zhu et al.: on held-out probes only
            items["modified"] = probe_scores(editor, fold_examples)
            items["unmodified"] = probe_scores(editor, self.splits.unmodified)
        items.update(counterfact_items(editor, past))
        final.update({name: mean(scores) for name, scores in items.items()})
        # the final model on the past edits' equivalents, per edit (GR_final: the papers' Gen. after T edits)
        items["past_equivalents"] = [g for g in grouped_scores(editor, [[(q, e.target) for q in e.equivalents]
                                                                         for e in past]) if g]
        final["past_equivalents"] = mean([mean(g) for g in items["past_equivalents"]])
        for name in ("train_subsample", "test"):  # the ratios' denominators, example by example
            if name in self.initial.get("items", {}):
                items[f"{name}_initial"] = self.initial["items"][name]
        final["items"] = items
        return final

    # -- one stream example ----------------------------------------------------------------------
    def _process(self, editor: Editor, item: StreamItem) -> None:
        ex = item.example
        shown = shown_to_editor(ex)
        with self.cache.lent():
            check = editor.check(shown)  # before any edit; handed back in after_example
        mistake = check.score < 1
        record = EditRecord(fold=item.fold, index=item.index, uid=ex.uid, mistake=mistake, edited=mistake)
        if mistake:
            seed_all(edit_seed(self.seed, item.fold, item.index))
            start = time.perf_counter()
            result = editor.edit(shown)
            record.seconds = time.perf_counter() - start
            record.steps, record.info = result.steps, result.info
            with self.cache.lent():
                record.success = editor.scores([ex.prompt], [ex.target])[0] == 1
                if ex.equivalents:
                    record.gr = editor.scores(ex.equivalents, [ex.target] * len(ex.equivalents))
                if ex.locality:
                    record.loc_tokens, record.loc = self._locality_kept(editor, item.fold, [(item.index, ex)])[0]
            record.params_added = editor.params_added()
        editor.after_example(shown, check)
        self.records.append(record)
        if mistake:
            self.edits.append(record)
            self.global_step += 1
            sr = mean([float(r.success) for r in self.edits])
            self.bar.set_postfix(fold=item.fold, E=len(self.edits), SR=f"{sr:.3f}")
            self._log({"edit/success": float(record.success), "edit/seconds": record.seconds, "SR": sr})
            if len(self.edits) % self.loop.eval_every == 0:
                self._evaluate(editor)
            if self.loop.save_state and len(self.edits) % self.loop.state_every == 0 and self._state_due():
                self._save_state(editor, item.fold)

    def _state_due(self) -> bool:
        """Whether saving a state now keeps saving within `loop.state_overhead` of the stream's time."""
        share = self.loop.state_overhead
        return not share or time.perf_counter() - self.last_state >= self.state_seconds / share

    def _save_state(self, editor: Editor, fold: int) -> None:
        began = time.perf_counter()
        self.state_bytes.append(self.records.save_state(fold, editor.edit_state()))
        self.last_state = time.perf_counter()
        self.state_seconds = self.last_state - began

    def _locality_kept(self, editor: Editor, fold: int,
                       examples: list[tuple[int, Example]]) -> list[tuple[list[float], list[float]]]:
        """Right after an edit, per (index, example): its locality pairs' `loc_tokens` (EasyEdit's
        Loc: the initial model's teacher-forced answers kept) and `loc` (right or wrong as f0 was)."""
        if not examples:
            return []
        shown = [ex for _, ex in examples]
        tokens, scores = locality_predictions(editor, shown), locality_scores(editor, shown)
        before_tokens, before = self.initial["locality_tokens"][str(fold)], self.initial["locality"][str(fold)]
        return [(tokens_kept(t, before_tokens[i]), kept(s, before[i]))
                for (i, _), t, s in zip(examples, tokens, scores)]

    def _process_batch(self, editor: Editor, item: StreamItem) -> None:
        """`loop.mode=batch` (Zhu et al., Sec. 4): at the fold's first example, every fact of the
        fold is edited at once (all of them, as Zhu et al. modify m facts whatever the model
        answered); each gets an edit record with its success and GR after the batch."""
        if self.batch_done:
            return
        self.batch_done = True
        facts = self.loop.stream(self.splits.folds[item.fold])
        with self.cache.lent():
            before = editor.scores([e.prompt for e in facts], [e.target for e in facts])
        seed_all(edit_seed(self.seed, item.fold, 0))
        start = time.perf_counter()
        result = editor.edit_batch([shown_to_editor(e) for e in facts])
        seconds = time.perf_counter() - start
        with self.cache.lent():
            after = editor.scores([e.prompt for e in facts], [e.target for e in facts])
            gr = grouped_scores(editor, [[(q, e.target) for q in e.equivalents] for e in facts])
            with_pairs = [(i, e) for i, e in enumerate(facts) if e.locality]
            loc = dict(zip([i for i, _ in with_pairs], self._locality_kept(editor, item.fold, with_pairs)))
        for index, (ex, was, now) in enumerate(zip(facts, before, after)):
            loc_tokens, loc_rw = loc.get(index, (None, None))
            record = EditRecord(fold=item.fold, index=index, uid=ex.uid, mistake=was < 1, edited=True, success=now == 1,
                                gr=gr[index], seconds=seconds / len(facts), steps=result.steps,
                                params_added=editor.params_added(), loc_tokens=loc_tokens, loc=loc_rw,
                                info={"batch_size": len(facts), "batch_seconds": seconds,
                                      **(result.info if index == 0 else {})})
            self.records.append(record)
            self.edits.append(record)
        self.global_step += len(facts)
        self._log({"SR": mean([float(r.success) for r in self.edits]), "edit/seconds": seconds})
        if self.loop.save_state:
            self._save_state(editor, item.fold)

    def _evaluate(self, editor: Editor) -> None:
        fold_examples, began = self.splits.folds[self.fold], time.perf_counter()
        with self.cache.lent():
            point = EvalRecord(
                fold=self.fold, edits=len(self.edits),
                ER=accuracy(editor, [fold_examples[r.index] for r in self.edits]),
                TrainR=ratio(accuracy(editor, self.splits.train_subsample), self.initial["train_subsample"]),
                TestR=ratio(accuracy(editor, self.test_set), self.initial["test"]))
        point.seconds = time.perf_counter() - began  # what a mid-stream evaluation costs (benchmark.perf)
        self.records.append(point)
        self._log({"eval/ER": point.ER, "eval/TrainR": point.TrainR, "eval/TestR": point.TestR})

    def _log(self, metrics: dict[str, float]) -> None:
        if self.log is not None:
            self.log(metrics, self.global_step)


class SequentialEditingCallback(L.Callback):
    """Lightning's test loop drives the stream: one batch is one stream item, and the hooks are
    forwarded to the `EditingLoop`, which also logs to the trainer's loggers."""

    def __init__(self, loop: EditingLoop):
        self.loop = loop

    def setup(self, trainer, pl_module, stage):
        def log(metrics: dict[str, float], step: int) -> None:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

        self.loop.log = log

    def on_test_batch_start(self, trainer, pl_module, batch: StreamItem, batch_idx: int, dataloader_idx: int = 0):
        self.loop.step(pl_module, batch)

    def on_test_end(self, trainer, pl_module):
        self.loop.finish(pl_module)
