"""Initial models (T-Patcher App. B): editors start from a model trained on the task's D'train.

A Lightning fit (validation on D_val, best checkpoint kept) trains the adapter's model with its
task loss; the weights are cached as safetensors under a key of the model, data and init
configs, so every run with the same settings reuses them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from benchmark.cache import cache_dir, pin, pin_mismatch, pin_path
from benchmark.config import InitConfig
from benchmark.keep_best import KeepBest
from benchmark.models.base import ModelAdapter
from benchmark.records import dedupe_shared, write_atomically
from benchmark.registry import DATASETS
from benchmark.types import Example, with_training_forms
from data.base import EditDataModule


class TaskModule(L.LightningModule):
    """Trains the model of an adapter on (prompt, target) examples with the task loss."""

    def __init__(self, adapter: ModelAdapter, lr: float):
        super().__init__()
        self.adapter, self.model, self.lr = adapter, adapter.model, lr

    def _batch(self, examples: list[Example]):
        return self.adapter.encode([e.prompt for e in examples], [e.target for e in examples])

    def training_step(self, examples, _idx):
        batch = self._batch(examples)
        loss = self.adapter.loss(batch, self.adapter.scored_logits(batch))
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.size)
        return loss

    def validation_step(self, examples, _idx):
        batch = self._batch(examples)
        acc = self.adapter.example_scores(batch, self.adapter.scored_logits(batch)).mean()
        self.log("val_acc", acc, prog_bar=True, batch_size=batch.size)

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)


# Data fields that do not change D'train or D_val, hence not the initial model.
_NOT_TRAINING_DATA = {"num_folds", "train_subsample", "pool_size"}


@contextmanager
def deterministic(threads: int | None):
    """Fixed thread count and deterministic kernels while training: a sum over 1 thread is added in
    one order, so the trained model does not depend on how many cores the machine has."""
    if threads is None:
        yield
        return
    before, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(strict)


_NOT_TRAINING_MODEL = ("eval_batch_size", "eval_cache_mb", "metric", "device")  # how it is scored, not trained


def init_key(model_cfg, data_cfg, init_cfg: InitConfig) -> str:
    data_fields = {k: v for k, v in asdict(data_cfg).items() if k not in _NOT_TRAINING_DATA}
    model_fields = {k: v for k, v in asdict(model_cfg).items() if k not in _NOT_TRAINING_MODEL}
    init_fields = {k: v for k, v in asdict(init_cfg).items() if k != "threads"}
    parts = [model_fields, data_fields, init_fields]
    version = getattr(DATASETS.get(data_cfg.name).target, "version", 1) if data_cfg.name in DATASETS else 1
    if version != 1:  # what the reader makes of the same files changed: a new initial model
        parts.append({"data_version": version})
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def initial_weights(model_cfg, data_cfg, init_cfg: InitConfig) -> Path | None:
    """Where the initial model of these settings is cached (once trained); None where none is trained."""
    if init_cfg.epochs == 0:
        return None
    return cache_dir() / "initial" / init_key(model_cfg, data_cfg, init_cfg) / "model.safetensors"


def prepare_initial_model(adapter: ModelAdapter, datamodule: EditDataModule, model_cfg, init_cfg: InitConfig,
                          progress: bool = True) -> Path | None:
    """Train (or load the cached) initial model in place; returns its weights file."""
    weights = initial_weights(model_cfg, datamodule.config, init_cfg)
    if weights is None:
        return None
    if weights.exists():
        problem = _load_verified(adapter, weights)
        if problem is None:
            adapter.model.eval()
            return weights
        print(f"seqedit: the cached initial model {weights} {problem}; fitting it again", file=sys.stderr)
        weights.unlink()
    _fit(adapter, datamodule, model_cfg, init_cfg, progress, weights)
    adapter.model.eval()
    return weights


def _fit(adapter: ModelAdapter, datamodule: EditDataModule, model_cfg, init_cfg: InitConfig, progress: bool,
         weights: Path) -> None:
    """Fine-tune the model on D'train and cache its weights with their checksum; where the cache
    cannot be written (full, read-only) the fitted model still serves this run."""
    splits = datamodule.splits
    module = TaskModule(adapter, init_cfg.lr)
    adapter.model.train()
    # keep the epoch with the best D_val accuracy (the paper validates its initial models on D_val)
    best = KeepBest("val_acc")
    keep_best = init_cfg.keep == "best_val"
    trainer = L.Trainer(max_epochs=init_cfg.epochs, accelerator="auto" if model_cfg.device != "cpu" else "cpu",
                        devices=1, logger=False, callbacks=[best] if keep_best else [],
                        enable_checkpointing=False, enable_progress_bar=progress,
                        enable_model_summary=False, num_sanity_val_steps=0)
    # every training form of a fact (Zhu et al.: the model learns facts from their evidence)
    loader = DataLoader(with_training_forms(splits.train), batch_size=init_cfg.batch_size, shuffle=True,
                        collate_fn=list, generator=torch.Generator().manual_seed(model_cfg.seed))
    if not splits.val and keep_best:
        print("seqedit: the data has no D_val; the initial model's best epoch is chosen on 64 D'train examples",
              file=sys.stderr)
    val = DataLoader(splits.val or splits.train[:64], batch_size=64, collate_fn=list)
    torch.manual_seed(model_cfg.seed)  # dropout masks: the same model from the same settings
    with deterministic(init_cfg.threads):
        trainer.fit(module, loader, val)
    if keep_best:
        best.restore(module)
    adapter.model.eval()
    state = dedupe_shared({k: v.contiguous() for k, v in adapter.model.state_dict().items()})
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(weights, lambda tmp: save_file(state, str(tmp)))
        pin(weights)
    except OSError as err:
        print(f"seqedit: could not cache the initial model at {err.filename or weights} ({err.strerror or err}); "
              "this run goes on with the model it fitted, and the next one fits it again", file=sys.stderr)


def _load_verified(adapter: ModelAdapter, weights: Path) -> str | None:
    """Load a cached initial model where it can be trusted; else say why not (and load nothing):
    its bytes must match the checksum written beside it, and its tensors be this model's, every
    name and shape (a file from another model would otherwise load partly and publish an
    untrained model's metrics)."""
    if pin_mismatch(weights):
        return "does not match its checksum (damaged)"
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error on a cut or foreign file
        return f"cannot be read ({type(err).__name__})"
    expected = {k: tuple(v.shape) for k, v in dedupe_shared(adapter.model.state_dict()).items()}
    if {k: tuple(v.shape) for k, v in state.items()} != expected:
        return "holds tensors that are not this model's"
    adapter.model.load_state_dict(state, strict=False)  # tied weights are saved once (dedupe_shared)
    if not pin_path(weights).exists():  # cached before checksums were written: verified by its tensors
        pin(weights)
    return None


def report(adapter: ModelAdapter, datamodule: EditDataModule) -> dict[str, float]:
    """Accuracy of the initial model on D_test, D_tr and D_edit, as the paper reports it."""
    splits = datamodule.splits
    edit = [e for fold in splits.folds for e in fold]
    out = {}
    for name, examples in (("test", splits.test), ("train_subsample", splits.train_subsample), ("edit", edit)):
        scores = adapter.scores([e.prompt for e in examples], [e.target for e in examples]) if examples else []
        out[name] = sum(scores) / len(scores) if scores else float("nan")
    return out


