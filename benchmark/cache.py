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
