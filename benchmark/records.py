"""A run folder: resolved config, an append-only record per stream example, editor state for
resume, and the results file.

Crash safety: a record line is appended and fsync'ed, then the editor state is written to a temp
file and renamed, naming how many record lines it covers and the hash of the last of them. On
resume the records are verified against it (every line whole and valid JSON, the covered lines
present, the last one's hash equal) and cut back to that count, so records and model state always
agree; at most the edit in progress is redone (with the same per-edit seed, so with the same
outcome). Anything else (a damaged middle line, records shorter than the state, another run's
state) is a one-line `ResumeError` naming the file and line, never a silent rewrite.

Safe by default: state files hold tensors, numbers, strings, lists and dicts only, and are read
with `torch.load(weights_only=True)`, which executes nothing. A run folder is locked (`flock`)
while a run writes it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmark.record_types import KINDS, Record, parse_all

RECORDS = "edits.jsonl"


class ResumeError(ValueError):
    """A run folder whose records or state cannot be trusted; the message names the file and line."""


class RunLockedError(ValueError):
    """Another process is writing the run folder."""


class RunFolderError(ValueError):
    """A run folder holding a link or a special file where seqedit reads or writes."""


OWNED_BY_OTHERS = ("wandb",)  # W&B's offline logs, with its own links: W&B writes there, seqedit never


def check_run_folder(run_dir: Path) -> None:
    """A run folder is something people copy, download and share, so nothing in it may point
    elsewhere: the folder, and every entry seqedit may read or write below it, must be a plain folder
    or regular file. A link (to a file outside, or inside) or a device, pipe or socket is refused in
    one line before anything is read or written; `open_no_follow` closes the race after the check."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise RunFolderError(f"{run_dir}: the run folder is a link; give a plain folder (seqedit never follows one)")
    if not run_dir.exists():
        return
    for top, folders, files in os.walk(run_dir, followlinks=False):
        if Path(top) == run_dir:
            folders[:] = [f for f in folders if f not in OWNED_BY_OTHERS]
        for name in [*folders, *files]:
            path = Path(top) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                kind = "a link" if path.is_symlink() else "not a regular file"
                raise RunFolderError(f"{path}: {kind} inside a run folder; seqedit writes only plain files there and "
                                     "will not follow it (remove it, or start another run_id)")


def open_no_follow(path: Path, mode: str, **kwargs):
    """`open(path, mode)` for the files a run appends to, refusing a link at the last component
    (O_NOFOLLOW), so a link swapped in after `check_run_folder` is not followed either."""
    flags = {"a": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "a+": os.O_RDWR | os.O_APPEND | os.O_CREAT,
             "w": os.O_WRONLY | os.O_TRUNC | os.O_CREAT}[mode]
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunFolderError(f"{path}: a link inside a run folder; seqedit will not follow it") from None
        raise
    return os.fdopen(fd, mode, **kwargs)


CHAIN = "chain"  # each record line's link: a hash of the line before's link and this line's content


def chain_link(previous: str, record: dict[str, Any]) -> str:
    """The link of a record line: SHA-256 over the previous line's link and this line's content
    (its JSON without the link), so a change to any line breaks the chain from that line on."""
    body = json.dumps({k: v for k, v in record.items() if k != CHAIN})
    return hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()[:16]


def chained(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines with their links (re)computed in this order (a merged multi-process file)."""
    out, previous = [], ""
    for record in lines:
        previous = chain_link(previous, record)
        out.append({**{k: v for k, v in record.items() if k != CHAIN}, CHAIN: previous})
    return out


def write_atomically(path: Path, write) -> None:
    """`write(tmp)`, then the temporary renamed onto `path`: a reader sees the old file or the new
    one, never half of one. Where the disk is full or not writable the temporary is removed and one
    OSError names `path` (torch and safetensors report a failed write as their own errors)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException as err:  # a signal too: no half-written temporary is left behind
        tmp.unlink(missing_ok=True)
        if not isinstance(err, (OSError, RuntimeError)) and type(err).__name__ != "SafetensorError":
            raise
        code = getattr(err, "errno", None)
        if not code and shutil.disk_usage(path.parent).free < 2**16:  # torch says only "iostream error"
            code = errno.ENOSPC
        reason = os.strerror(code) if code else " ".join(str(err).split())[:80]
        raise OSError(code or errno.EIO, f"cannot write it ({reason})", str(path)) from None


def line_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]


def load_tensors(path: Path) -> Any:
    """A state file written by `torch.save`, read without executing anything (weights_only): a
    file that needs more than tensors and plain containers is refused, as is a damaged one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ResumeError(f"{path}: not a readable state file ({first})") from None


class RunLock:
    """An exclusive `flock` on RUN/.lock for as long as a run writes the folder; the kernel drops
    it when the process dies, so a crashed run never blocks the next one."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self._handle = open_no_follow(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "?"
            self._handle.close()
            raise RunLockedError(f"{run_dir} is being written by another run (pid {holder}); wait for it to end "
                                 "or choose another run_id") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


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


def _note_resumed_code(config_path: Path) -> None:
    """A run resumed under other code than it last ran with: a header line says so (the records
    before it were made with the versions above it), so the results name every version they hold."""
    text = config_path.read_text(encoding="utf-8")
    versions = [line.rsplit(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("# ") and "code_version:" in line]
    current = code_version()
    if versions and versions[-1] == current:
        return
    print(f"seqedit: {config_path.parent} ran with code {versions[-1] if versions else '(unrecorded)'}; resuming with "
          f"{current} (its config.yaml records both)", file=sys.stderr)
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if not line.startswith("# ")), len(lines))
    lines.insert(at, f"# resumed with code_version: {current}\n")
    write_atomically(config_path, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))


class RunRecords:
    def __init__(self, run_dir: Path, config_yaml: str, seed: int, resume: bool):
        self.dir = Path(run_dir)
        self.path = self.dir / RECORDS
        self.state_dir = self.dir / "state"
        header = f"# seed: {seed}\n# code_version: {code_version()}\n"
        config_path = self.dir / "config.yaml"
        if resume and not config_path.exists():
            if self.path.exists() and self.path.stat().st_size:
                raise ResumeError(f"{config_path}: missing beside {self.path}; the run cannot be resumed safely")
            # stopped before it wrote anything (as a stop message's `resume=true` may be given): start it
            print(f"seqedit: nothing to resume in {self.dir} yet; starting the run", file=sys.stderr)
            resume = False
        if resume:
            try:
                differ = config_differences(config_path.read_text(encoding="utf-8"), config_yaml)
            except (ResumeError, UnicodeDecodeError) as err:
                raise ResumeError(f"{config_path}: {err if isinstance(err, ResumeError) else 'not UTF-8 text'}; "
                                  "the run cannot be resumed safely") from None
            if differ:
                raise ValueError(f"{config_path}: the run there has a different config ({'; '.join(differ[:3])}"
                                 f"{'; ...' if len(differ) > 3 else ''}); resume needs the same one")
        elif self.path.exists() and self.path.stat().st_size > 0:
            raise FileExistsError(f"{self.dir} already holds records; pass resume=true or another run_id")
        self.dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # no records: whatever an earlier, failed start left is stale
            for name in ("initial.json", "results.json", RECORDS):
                (self.dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(exist_ok=True)
        if not resume:
            config_path.write_text(header + without_resume(config_yaml))
        else:
            _note_resumed_code(config_path)
        self.header = "".join(line for line in config_path.read_text(encoding="utf-8").splitlines(keepends=True)
                              if line.startswith("# "))  # seed and code versions, for the merged folder
        self.lines: list[dict] = self._read() if resume else []  # as written (the hash chain covers them)
        self._handle = open_no_follow(self.path, "a", encoding="utf-8")

    def _read(self) -> list[dict]:
        """Every record line, verified: only a last line without its newline (cut by a crash while
        it was written, so no state covers it) is dropped; any other bad line is an error."""
        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ResumeError(f"{self.path}: not UTF-8 text at byte {err.start}") from None
        raws = text.split("\n")
        if raws[-1]:  # no newline at the end: the line being written when the run stopped
            raws[-1] = ""
        lines, previous = [], ""
        for number, raw in enumerate(raws[:-1], 1):
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or record.get("type") not in KINDS:
                raise ResumeError(f"{self.path}:{number}: damaged record line; the run cannot be resumed safely")
            if CHAIN in record or previous:  # records written before links were kept have none
                previous = chain_link(previous, record)
                if record.get(CHAIN) != previous:
                    raise ResumeError(f"{self.path}:{number}: changed after it was written (the records' hash chain "
                                      "breaks there); the run cannot be resumed safely")
            lines.append(record)
        return lines

    def truncate(self, keep: int) -> None:
        """Keep the first `keep` record lines (those the saved state covers)."""
        if keep == len(self.lines) and self.path.exists() and self.path.read_bytes().endswith(b"\n"):
            return  # nothing to cut: the file stays as it is
        self._handle.close()
        self.lines = self.lines[:keep]
        text = "".join(json.dumps(line) + "\n" for line in self.lines)
        write_atomically(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self._handle = open_no_follow(self.path, "a", encoding="utf-8")

    def records(self) -> list[Record]:
        """The record lines so far, typed."""
        return parse_all(self.lines)

    def append(self, typed: Record) -> None:
        record = _finite(typed.line())
        record[CHAIN] = chain_link(self.lines[-1].get(CHAIN, "") if self.lines else "", record)
        try:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as err:  # a full disk: name the file (a line cut short is dropped at resume)
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        self.lines.append(record)

    def save_state(self, fold: int, state: dict[str, Any]) -> int:
        """Write the editor state covering every record so far; returns its size in bytes."""
        path = self.state_dir / f"fold{fold}.pt"
        last = line_hash(self.lines[-1]) if self.lines else ""
        write_atomically(path, lambda tmp: torch.save({"lines": len(self.lines), "last": last, "editor": state}, tmp))
        return path.stat().st_size

    def load_state(self, fold: int) -> dict[str, Any] | None:
        """The saved state of `fold`, checked against the records it says it covers."""
        path = self.state_dir / f"fold{fold}.pt"
        if not path.exists():
            return None
        state = load_tensors(path)
        if not (isinstance(state, dict) and isinstance(state.get("lines"), int) and "editor" in state):
            raise ResumeError(f"{path}: not a seqedit state file")
        covered = state["lines"]
        if covered > len(self.lines):
            raise ResumeError(f"{path}: covers {covered} record lines but {self.path} has {len(self.lines)}; "
                              "the records were cut or replaced")
        if covered and line_hash(self.lines[covered - 1]) != state.get("last"):
            raise ResumeError(f"{self.path}:{covered}: differs from the record the state {path.name} was saved after")
        return state

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        self.write_json_to(self.dir, name, payload)

    @staticmethod
    def write_json_to(folder: Path, name: str, payload: dict[str, Any]) -> None:
        text = json.dumps(_finite(payload), indent=2, sort_keys=False, default=float)
        write_atomically(Path(folder) / name, lambda tmp: tmp.write_text(text))

    @staticmethod
    def write_merged(folder: Path, config_yaml: str, header: str, lines: list[dict]) -> None:
        """The run folder of a multi-process run: its config (headed as rank 0's: the seed and the
        code versions its records were made with) and every rank's records as one file."""
        folder = Path(folder)
        (folder / "config.yaml").write_text(header + without_resume(config_yaml))
        text = "".join(json.dumps(line) + "\n" for line in chained(lines))
        write_atomically(folder / RECORDS, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @staticmethod
    def append_merged(folder: Path, record: Record) -> None:
        """One more line at the end of a multi-process run's merged records (its links remade)."""
        path = Path(folder) / RECORDS
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        text = "".join(json.dumps(line) + "\n" for line in chained([*lines, _finite(record.line())]))
        write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

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


def config_identity(config_yaml: str) -> dict[str, Any]:
    """A run's config as data (comments, key order and `resume` left out): two configs are the
    same run when these are equal, however their YAML was written."""
    try:
        data = yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError as err:  # a damaged config.yaml: where YAML stopped reading it
        mark = getattr(err, "problem_mark", None)
        raise ResumeError(f"not readable YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if not isinstance(data, dict):
        raise ResumeError("a run config is a mapping of keys")
    data.pop("resume", None)
    return data


def config_differences(old_yaml: str, new_yaml: str) -> list[str]:
    """`key: old -> new` for every dotted key whose value differs."""
    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()} or {prefix: {}}

    old, new = flat(config_identity(old_yaml)), flat(config_identity(new_yaml))
    return [f"{k.rstrip('.')}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


_ABSENT = object()


def dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): keep the first name."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape)
        if key not in seen:
            seen.add(key)
            out[name] = tensor
    return out
