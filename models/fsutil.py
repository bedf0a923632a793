"""Filesystem helpers: atomic writes, advisory locks, free space, streamed hashing.

The same ideas as ``wheels/util.py``, kept here because this package runs without ``wheels``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import log

CHUNK = 8 << 20


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a crash right after must not lose the new name)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_free(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding ``path`` (its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


class LockBusy(Exception):
    """Raised by ``try_lock`` when another process holds the lock."""


@contextlib.contextmanager
def file_lock(path: Path, what: str, *, wait: bool = True) -> Iterator[None]:
    """An exclusive advisory lock (flock) shared by every process on the volume.

    With ``wait`` it blocks, saying so, while another downloader holds it; without, it raises ``LockBusy``.
    flock locks belong to the open file, so two threads of one process exclude each other too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(str(path)) from None
            log.info(f"waiting: another downloader is fetching {what} (lock {path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock at ``path`` right now (a snapshot, for planning only)."""
    if not path.exists():
        return False
    try:
        with file_lock(path, "", wait=False):
            return False
    except LockBusy:
        return True


class Digests:
    """sha256 of a byte stream, plus the git blob sha1 when the hub only gave that (small, non-LFS files)."""

    def __init__(self, git_size: int | None = None) -> None:
        self.sha256 = hashlib.sha256()
        self.git_sha1 = None
        if git_size is not None:
            self.git_sha1 = hashlib.sha1(usedforsecurity=False)
            self.git_sha1.update(b"blob %d\0" % git_size)
        self.count = 0
        self._git_size = git_size

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.git_sha1 is not None:
            self.git_sha1.update(data)
        self.count += len(data)

    def reset(self) -> None:
        self.__init__(self._git_size)  # type: ignore[misc]


def hash_prefix(path: Path, length: int, digests: Digests, on_bytes: Callable[[int], None] | None = None) -> None:
    """Feed the first ``length`` bytes of ``path`` into ``digests`` (resuming a partial download)."""
    remaining = length
    with path.open("rb") as f:
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            digests.update(chunk)
            remaining -= len(chunk)
            if on_bytes:
                on_bytes(len(chunk))


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None, git_size: int | None = None) -> Digests:
    """Stream a whole file through the digests, never holding more than one chunk in memory."""
    digests = Digests(git_size)
    hash_prefix(path, path.stat().st_size, digests, on_bytes)
    return digests
