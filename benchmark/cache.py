"""Where seqedit keeps what it can rebuild: tokenizers, facts, dequantised weights, initial models."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    path = Path(os.environ.get("SEQEDIT_CACHE", Path.home() / ".cache" / "seqedit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in chunks (cached artefacts and downloads are checked by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def pin_path(path: Path) -> Path:
    """Where the SHA-256 of a cached file is written: beside it, `NAME.sha256`."""
    return path.with_name(path.name + ".sha256")


def pin(path: Path) -> None:
    """Write the checksum of a cached file just made (or just verified by reading it whole)."""
    pin_path(path).write_text(file_sha256(path) + "\n")


def pin_mismatch(path: Path) -> bool:
    """Whether a cached file's bytes differ from the checksum written beside it (a file cached
    before checksums were written has none: its reader verifies it, then pins it)."""
    written = pin_path(path)
    return written.exists() and file_sha256(path) != written.read_text().strip()
