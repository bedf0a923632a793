"""Progress for long builds: the step, compiled objects N/M (from ninja's "[N/M]" lines), elapsed, and what remains."""

from __future__ import annotations

import re
import time

from . import log

_NINJA = re.compile(r"^\[(\d+)/(\d+)\]\s")


class NinjaProgress:
    """Feed it the build's output lines; it prints a status line when the object count moves (or every interval)."""

    def __init__(self, step: str, expected: int | None = None, interval: float = 30.0, clock=time.monotonic) -> None:
        self.step = step
        self.expected = expected
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.total = expected
        self.baseline: tuple[float, int] | None = None  # (time, done) when the first unit finished
        self._last_print = self.start

    def feed(self, line: str) -> str | None:
        match = _NINJA.match(line)
        now = self.clock()
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            # ninja's first line is [1/M] when the first command *starts*; a finished unit is N-1.
            self.total = total
            if done > self.done:
                self.done = done
                if self.baseline is None:
                    self.baseline = (now, done)
                return self._print(now)
        elif now - self._last_print >= self.interval:
            return self._print(now)
        return None

    def eta(self, now: float) -> float | None:
        if not self.total or self.baseline is None or self.done <= self.baseline[1]:
            return None
        t0, d0 = self.baseline
        rate = (now - t0) / (self.done - d0)
        return rate * (self.total - self.done)

    def status(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.start
        parts = [self.step]
        if self.total:
            parts.append(f"objects {self.done}/{self.total}")
        parts.append(f"elapsed {log.fmt_seconds(elapsed)}")
        eta = self.eta(now)
        if eta is not None:
            parts.append(f"about {log.fmt_seconds(eta)} left")
        return " | ".join(parts)

    def _print(self, now: float) -> str:
        self._last_print = now
        text = self.status(now)
        log.info(text)
        return text
