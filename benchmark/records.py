"""A run folder: resolved config, an append-only record per stream example, editor state for
resume, and the results file.

Crash safety: a record line is appended and fsync'ed, then the editor state is written to a temp
file and renamed, naming how many record lines it covers. On resume the records are cut back to
that count, so records and model state always agree; at most the edit in progress is redone
(with the same per-edit seed, so with the same outcome).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

RECORDS = "edits.jsonl"


def code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "seqedit-" + version("seqedit")
        except PackageNotFoundError:
            return "unknown"


class RunRecords:
    def __init__(self, run_dir: Path, config_yaml: str, seed: int, resume: bool):
        self.dir = Path(run_dir)
        self.path = self.dir / RECORDS
        self.state_dir = self.dir / "state"
        header = f"# seed: {seed}\n# code_version: {code_version()}\n"
        config_path = self.dir / "config.yaml"
        if resume:
            if not config_path.exists():
                raise FileNotFoundError(f"{config_path}: nothing to resume (no run there)")
            old = _strip_header(config_path.read_text())
            if old != without_resume(config_yaml):
                raise ValueError(f"{config_path}: the run there has a different config; resume needs the same one")
        elif self.path.exists() and self.path.stat().st_size > 0:
            raise FileExistsError(f"{self.dir} already holds records; pass resume=true or another run_id")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        if not resume:
            config_path.write_text(header + without_resume(config_yaml))
        self.lines: list[dict] = self._read() if resume else []
        self._handle = open(self.path, "a", encoding="utf-8")

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = []
        for raw in self.path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                break  # a line cut by the crash: it and anything after it are dropped
        return lines

    def truncate(self, keep: int) -> None:
        """Keep the first `keep` record lines (those the saved state covers)."""
        self._handle.close()
        self.lines = self.lines[:keep]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in self.lines), encoding="utf-8")
        tmp.replace(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        record = _finite(record)
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.lines.append(record)

    def save_state(self, fold: int, state: dict[str, Any]) -> None:
        path = self.state_dir / f"fold{fold}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"lines": len(self.lines), "editor": state}, tmp)
        tmp.replace(path)

    def load_state(self, fold: int) -> dict[str, Any] | None:
        path = self.state_dir / f"fold{fold}.pt"
        return torch.load(path, weights_only=False) if path.exists() else None

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        self.write_json_to(self.dir, name, payload)

    @staticmethod
    def write_json_to(folder: Path, name: str, payload: dict[str, Any]) -> None:
        tmp = Path(folder) / (name + ".tmp")
        tmp.write_text(json.dumps(_finite(payload), indent=2, sort_keys=False, default=float))
        tmp.replace(Path(folder) / name)

    @staticmethod
    def write_merged(folder: Path, config_yaml: str, seed: int, lines: list[dict]) -> None:
        """The run folder of a multi-process run: its config and every rank's records as one file."""
        folder = Path(folder)
        header = f"# seed: {seed}\n# code_version: {code_version()}\n"
        (folder / "config.yaml").write_text(header + without_resume(config_yaml))
        tmp = folder / (RECORDS + ".tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        tmp.replace(folder / RECORDS)

    def close(self) -> None:
        self._handle.close()


def _finite(value: Any) -> Any:
    """NaN (a metric with nothing to average, e.g. GR without equivalents) becomes null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def without_resume(config_yaml: str) -> str:
    return "".join(line for line in config_yaml.splitlines(keepends=True) if not line.startswith("resume:"))


def _strip_header(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("# "))
