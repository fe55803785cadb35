"""SIGINT and SIGTERM handed to one handler for the length of a with-block (torch-free: the CLI
installs one before anything heavy is imported)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def handling_signals(handler: Callable) -> Iterator[None]:
    """`handler(signum, frame)` for SIGINT and SIGTERM inside the block; the previous handlers
    after it. Off the main thread, where Python allows no handler, the signals stay as they are."""
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
