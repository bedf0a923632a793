"""Plain line logging for the runtime. The start script prefixes each process's lines ([worker], [comfyui]), so
these lines carry no prefix of their own; everything goes to stderr so stdout stays free for data."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_stream: TextIO = sys.stderr


def set_stream(stream: TextIO) -> None:
    global _stream
    _stream = stream


def info(message: str) -> None:
    print(message, file=_stream, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=_stream, flush=True)


def error(message: str) -> None:
    print(f"error: {message}", file=_stream, flush=True)


def fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Timer:
    """Wall time since creation, for the timings a job answer reports."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start
