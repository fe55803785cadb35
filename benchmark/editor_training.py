"""The training phase of editors that learn before they edit (`traits.training`: SERA's scope
classifier, KE's and MEND's hypernetworks).

`seqedit train-editor editor=NAME model=... data=...` is one Lightning fit of the module the editor
gives (`training_module`), validated on D_val, the best checkpoint by its monitored metric kept.
The trained state is cached under a key of everything that shaped it: the editor's training
settings, the initial model (model, data, init) and the seed. A run loads the state trained for
its model and data, or stops with the command that makes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmark.cache import cache_dir, pin, pin_mismatch, pin_path
from benchmark.init import deterministic, init_key, prepare_initial_model
from benchmark.keep_best import KeepBest
from benchmark.records import ResumeError, load_tensors, write_atomically

# Editor fields that only matter while editing, not for what the training phase learns.
EDIT_TIME_FIELDS = {"max_steps", "threshold", "backend"}


def training_key(run_cfg) -> str:
    from benchmark.registry import EDITORS

    editor = {k: v for k, v in asdict(run_cfg.editor).items() if k not in EDIT_TIME_FIELDS}
    initial = init_key(run_cfg.model, run_cfg.data, run_cfg.init)
    version = EDITORS.get(run_cfg.editor.name).target.training_version  # bumped when training code changes
    payload = json.dumps([editor, initial, run_cfg.seed, version], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def trained_path(run_cfg) -> Path:
    return cache_dir() / "editors" / f"{run_cfg.editor.name}-{training_key(run_cfg)}.pt"


def train_command(run_cfg) -> str:
    return (f"seqedit train-editor editor={run_cfg.editor.name} model={run_cfg.model.name} "
            f"data={run_cfg.data.name} (plus this run's other overrides)")


def load_trained_state(run_cfg) -> dict[str, Any]:
    """The cached trained state, where it is whole (its checksum, and readable as tensors only)."""
    path = trained_path(run_cfg)
    if not path.exists():
        raise FileNotFoundError(f"editor {run_cfg.editor.name} has no trained state for this model and data "
                                f"({path.name}); make it with: {train_command(run_cfg)}")
    try:
        if pin_mismatch(path):
            raise ResumeError("does not match its checksum")
        state = load_tensors(path)
    except ResumeError as err:
        raise FileNotFoundError(f"{path}: the cached trained state of editor {run_cfg.editor.name} is damaged "
                                f"({str(err).rsplit('(', 1)[-1].rstrip(')')}); make it again with: "
                                f"{train_command(run_cfg)}") from None
    if not pin_path(path).exists():  # cached before checksums were written, read whole just now
        pin(path)
    return state


def train_editor(run_cfg, progress: bool = True) -> dict[str, Any]:
    """Fit the editor's training module (or find it cached); returns where and how well."""
    from benchmark.build import build_data, build_editor
    from benchmark.models import build_model

    path = trained_path(run_cfg)
    if path.exists() and not pin_mismatch(path):
        return {"state": str(path), "cached": True}
    datamodule = build_data(run_cfg)
    adapter = build_model(run_cfg.model)
    prepare_initial_model(adapter, datamodule, run_cfg.model, run_cfg.init, progress)
    editor = build_editor(run_cfg, adapter)
    if not editor.traits.training:
        raise ValueError(f"editor {run_cfg.editor.name} has no training phase")
    module = editor.training_module(datamodule.splits.for_editor())
    best = KeepBest(module.monitor)
    L.seed_everything(run_cfg.seed, workers=True, verbose=False)
    trainer = L.Trainer(max_epochs=run_cfg.editor.train_epochs, accelerator=run_cfg.trainer.accelerator, devices=1,
                        logger=False, callbacks=[best], enable_checkpointing=False, enable_progress_bar=progress,
                        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False)
    with deterministic(run_cfg.init.threads):  # the same threads setting as the initial model's training
        trainer.fit(module)
    best.restore(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = editor.trained_state()
    write_atomically(path, lambda tmp: torch.save(state, tmp))
    pin(path)
    return {"state": str(path), "cached": False, module.monitor: best.best}
