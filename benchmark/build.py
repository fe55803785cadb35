"""The registered pieces of a resolved run config, built: its DataModule and its editor. Below
both `run` and `editor_training` (each builds what the other trains or streams), so neither
imports the other."""

from __future__ import annotations

import data  # noqa: F401  (registers datasets)
import editors  # noqa: F401  (registers editors)
from benchmark.config import RunConfig
from benchmark.registry import DATASETS, EDITORS
from data.base import EditDataModule
from editors.base import Editor


def build_data(run: RunConfig) -> EditDataModule:
    module = DATASETS.get(run.data.name).target(run.data)
    module.setup()
    return module


def build_editor(run: RunConfig, adapter) -> Editor:
    return EDITORS.get(run.editor.name).target(run.editor, adapter)
