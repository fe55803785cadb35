"""Published data files fetched on first use, where the published code fetches them, and kept in
the cache (`SEQEDIT_CACHE/downloads/`).

- Resumed: bytes arrive in `NAME.part`; an interrupted download (a cut connection, Ctrl-C) keeps
  them, and the next call asks the server for the rest (HTTP Range).
- Verified: a finished file's SHA-256 must equal `sha256` where one is given (`data.sha256=`);
  else it is pinned on first download (written beside the file) and every later use checks the
  file against the pin, so a damaged or swapped cache file is fetched again, never read.
  The publishers of CounterFact and ROME's zsRE give no checksum, hence the pin.
- A mismatch, a 404, or no network is one `DataError` line naming the address and how to pass the
  file yourself (`data.path=`); nothing half-made is left as a cached file.
- `SEQEDIT_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) refuses at once instead of trying the network.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from benchmark.cache import cache_dir, file_sha256, pin_path
from data.io import DataError

CHUNK = 1 << 20  # bytes a read asks for


def _refusal(url: str, reason: str) -> DataError:
    return DataError(f"{url}: {reason}; download it yourself and pass its path as data.path=FILE")


def offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("SEQEDIT_OFFLINE", "HF_HUB_OFFLINE"))


def fetch(url: str, name: str, sha256: str | None = None, timeout: float = 60.0, progress: bool = True) -> Path:
    """The file at `url`, as `cache/downloads/NAME`: from the cache where it is there and verified,
    else downloaded (resumed where a part is there) and verified."""
    folder = cache_dir() / "downloads"
    path, part = folder / name, folder / f"{name}.part"
    pin = pin_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        expected = sha256 or (pin.read_text().strip() if pin.exists() else None)
        if expected and file_sha256(path) == expected:
            return path
        path.unlink()  # damaged, swapped, or never verified: fetched again
        pin.unlink(missing_ok=True)
    if offline():
        raise _refusal(url, "not in the cache and offline (SEQEDIT_OFFLINE or HF_HUB_OFFLINE is set)")
    _download(url, part, timeout, progress)
    got = file_sha256(part)
    if sha256 and got != sha256:
        part.unlink()
        raise _refusal(url, f"checksum mismatch (sha256 {got[:16]}..., expected {sha256[:16]}...); nothing was cached")
    part.replace(path)
    pin.write_text(got + "\n")
    return path


def _download(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Into `part`, continuing after the bytes it holds where the server serves ranges."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) addresses only)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after what we hold: the part is the whole file
            return
        raise _refusal(url, f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise _refusal(url, f"cannot reach it ({getattr(err, 'reason', err)})") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress) as bar:
            try:
                for block in iter(lambda: response.read1(CHUNK), b""):  # what arrived, even if cut short
                    f.write(block)
                    bar.update(len(block))
            except (OSError, ValueError, http.client.HTTPException) as err:  # cut: kept for a resume
                f.flush()
                raise _refusal(url, f"the download broke off after {f.tell()} bytes ({type(err).__name__}); "
                                    "run again to resume it") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise _refusal(url, f"the download broke off at {size} of {total} bytes; run again to resume it")
