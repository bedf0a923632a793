"""Progress: a bar per file and one for the total on a terminal; plain log lines otherwise (docker build, CI)."""

from __future__ import annotations

import threading
from typing import Any

from tqdm import tqdm

from . import log


class Progress:
    def __init__(self, total_bytes: int, enabled: bool | None) -> None:
        stream = log.stream()
        self.enabled = bool(stream.isatty()) if enabled is None else enabled
        self._lock = threading.Lock()
        self._slots: list[bool] = []  # tqdm positions 1.. in use; 0 is the total
        self.total: Any = None
        if self.enabled:
            self.total = tqdm(
                total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="total", position=0,
                file=stream, leave=True, dynamic_ncols=True,
            )

    def file(self, name: str, size: int | None, initial: int = 0) -> FileProgress:
        if not self.enabled:
            return FileProgress(None, None, None)
        with self._lock:
            slot = next((i for i, used in enumerate(self._slots) if not used), len(self._slots))
            if slot == len(self._slots):
                self._slots.append(True)
            self._slots[slot] = True
        bar = tqdm(
            total=size, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name[:40],
            position=slot + 1, file=log.stream(), leave=False, dynamic_ncols=True,
        )
        return FileProgress(bar, self, slot)

    def release(self, slot: int) -> None:
        with self._lock:
            self._slots[slot] = False

    def close(self) -> None:
        if self.total is not None:
            self.total.close()


class FileProgress:
    """Counts bytes for one file; ``update`` also moves the total (negative after a server ignored a Range)."""

    def __init__(self, bar: Any, owner: Progress | None, slot: int | None) -> None:
        self.bar = bar
        self.owner = owner
        self.slot = slot

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
        if self.owner is not None and self.owner.total is not None:
            self.owner.total.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.owner is not None and self.slot is not None:
            self.owner.release(self.slot)
