"""Published files fetched on first use (data/download.py), against a real HTTP server on
127.0.0.1 serving a fixture: a good download (then none), a download cut short and resumed with a
Range request, a wrong checksum (refused, nothing cached), a 404, no server, offline, a damaged
cache file fetched again, and CounterFact and zsRE without data.path built from their fetched files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmark.types import DataError
from data.download import fetch
from tests.conftest import ZSRE_MEND

FIXTURES = Path(__file__).parent / "fixtures"
BODY = (FIXTURES / "counterfact_rome.json").read_bytes()
FILES = {"/counterfact.json": BODY,  # and ROME's zsRE eval file, here as its real train sample's records
         "/zsre_mend_eval.json": (ZSRE_MEND / "zsre_mend_train-1k.json").read_bytes()}


class Server:
    """Serves FILES (ranges too), 404 elsewhere; `cut` bytes of the next whole
    (non-range) answer are sent before the connection drops."""

    def __init__(self):
        self.requests: list[dict] = []
        self.cut: int | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path not in FILES:
                    self.send_error(404, "Not Found")
                    return
                whole = FILES[self.path]
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                body = whole[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(whole) - 1}/{len(whole)}")
                self.end_headers()
                if owner.cut is not None and not start:
                    self.wfile.write(body[: owner.cut])
                    self.wfile.flush()
                    owner.cut = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path / "cache"))
    for name in ("SEQEDIT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    s = Server()
    yield s
    s.close()


def _cached(tmp_path) -> list[str]:
    folder = tmp_path / "cache" / "downloads" / "cf"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_good_download_is_verified_pinned_and_not_fetched_again(server, tmp_path):
    path = fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", progress=False)
    assert path.read_bytes() == BODY
    assert (path.parent / "counterfact.json.sha256").read_text().strip() == hashlib.sha256(BODY).hexdigest()
    assert fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", progress=False) == path
    assert len(server.requests) == 1  # the second call read the cache
    sha = hashlib.sha256(BODY).hexdigest()
    assert fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", sha, progress=False) == path


def test_a_download_cut_short_is_resumed_with_a_range_request(server, tmp_path):
    server.cut = len(BODY) // 3
    with pytest.raises(DataError, match=r"broke off at \d+ of \d+ bytes; run again to resume"):
        fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", progress=False)
    assert _cached(tmp_path) == ["counterfact.json.part"]  # kept, not taken for the file
    path = fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", progress=False)
    assert path.read_bytes() == BODY
    assert server.requests[1]["range"] == f"bytes={len(BODY) // 3}-"
    assert _cached(tmp_path) == ["counterfact.json", "counterfact.json.sha256"]


def test_a_wrong_checksum_is_refused_and_nothing_is_cached(server, tmp_path):
    with pytest.raises(DataError, match="checksum mismatch.*nothing was cached.*data.path="):
        fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", "0" * 64, progress=False)
    assert _cached(tmp_path) == []


def test_a_404_no_server_and_offline_are_one_line_naming_the_address(server, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"/missing.json: HTTP 404.*pass its path as data.path=FILE"):
        fetch(f"{server.url}/missing.json", "cf/counterfact.json", progress=False)
    port = server.httpd.server_port
    server.close()
    with pytest.raises(DataError, match=rf"127.0.0.1:{port}/counterfact.json: cannot reach it"):
        fetch(f"http://127.0.0.1:{port}/counterfact.json", "cf/counterfact.json", progress=False, timeout=5)
    monkeypatch.setenv("SEQEDIT_OFFLINE", "1")
    with pytest.raises(DataError, match="not in the cache and offline"):
        fetch(f"http://127.0.0.1:{port}/counterfact.json", "cf/counterfact.json", progress=False)
    assert _cached(tmp_path) == []


def test_a_damaged_cache_file_is_fetched_again(server, tmp_path):
    path = fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", progress=False)
    path.write_bytes(BODY[:-10] + b"tampered!!")
    assert fetch(f"{server.url}/counterfact.json", "cf/counterfact.json", progress=False).read_bytes() == BODY
    assert len(server.requests) == 2


def test_counterfact_without_a_path_is_fetched_and_read(server, tmp_path):
    from benchmark.build import build_data
    from benchmark.config import compose, instantiate

    dm = build_data(instantiate(compose(["data=counterfact", f"data.url={server.url}/counterfact.json",
                                         "model=tiny-llama"])))
    edits = [e for fold in dm.splits.folds for e in fold]
    assert edits and all(e.locality for e in edits)
    assert any("data.path not set" in n and server.url in n for n in dm.notices)
    assert len(json.loads(BODY)) == dm.records_read


def test_zsre_without_a_path_reads_the_fetched_eval_file_as_edits_only(server, tmp_path):
    from benchmark.build import build_data
    from benchmark.config import compose, instantiate

    dm = build_data(instantiate(compose(["data=zsre", f"data.url={server.url}/zsre_mend_eval.json",
                                         "model=tiny-llama"])))
    assert dm.layout == "mend" and dm.edit_only and dm.records_read == 1000
    assert (tmp_path / "cache" / "downloads" / "zsre" / "zsre_mend_eval.json").exists()


def test_offline_without_a_path_is_one_line_and_exit_2(tmp_path):
    env = {"SEQEDIT_CACHE": str(tmp_path / "cache"), "SEQEDIT_OFFLINE": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", "data", "stats", "data=counterfact"],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "https://rome.baulab.info/data/dsets/counterfact.json" in lines[0]
    assert "data.path=" in lines[0] and "Traceback" not in out.stderr
