"""Step logging with timings, in the manner of cibuildwheel's ``log.step``.

Everything goes to stderr so that commands whose stdout is data (``--list --json``, ``cache_key``) stay parseable.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

_stream: TextIO | None = None  # None: whatever sys.stderr is at the time (so pytest's capture sees it)


def set_stream(stream: TextIO | None) -> None:
    global _stream
    _stream = stream


def _emit(prefix: str, message: str) -> None:
    print(f"{prefix} {message}", file=_stream or sys.stderr, flush=True)


def info(message: str) -> None:
    _emit("[wheels]", message)


def warn(message: str) -> None:
    _emit("[wheels] warning:", message)


def fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Log a step, then its duration when it ends (or that it failed)."""
    _emit("[wheels] ==>", title)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        _emit("[wheels]    ", f"failed after {fmt_seconds(time.monotonic() - start)}: {title}")
        raise
    _emit("[wheels]    ", f"done in {fmt_seconds(time.monotonic() - start)}")
