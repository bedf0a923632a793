"""Small shared helpers: hashing, atomic writes, locks, downloads, running programs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import log
from .errors import PipelineError, SourceError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def tree_hash(root: Path, ignore: Sequence[str] = ("__pycache__", "build", "dist", ".eggs")) -> str:
    """A content hash of a folder: relative paths, file modes' exec bit and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in ignore or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file():
            digest.update(str(rel).encode() + b"\0")
            digest.update(b"x" if os.access(path, os.X_OK) else b"-")
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy src to dest through a temporary name in dest's folder, then rename: no half-written dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """An exclusive advisory lock; waits, saying so, when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another process that holds the lock on {what} ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(url: str, dest: Path, sha256: str | None, *, what: str, attempts: int = 4) -> Path:
    """Fetch url into dest (atomically), verifying sha256 when given. Retries dropped connections and 5xx."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=120) as response:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise SourceError(
                    f"{what} downloaded from {url} has sha256 {digest.hexdigest()}, but its pin is {sha256}",
                    why="the file on the server changed, or the download was tampered with or corrupted",
                    fix="check the pin against the index's published hash; the bad file was deleted",
                )
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as e:
            last = e
            if e.code < 500:
                raise SourceError(
                    f"Could not download {what}: {url} answered HTTP {e.code}",
                    fix="check the URL in the matrix or toolkit file, or the mirror setting",
                ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if attempt < attempts:
            delay = 2**attempt
            log.warn(f"download of {what} failed ({last}); retrying in {delay}s ({attempt}/{attempts})")
            time.sleep(delay)
    raise SourceError(
        f"Could not download {what} from {url} after {attempts} attempts: {last}",
        fix="check the network or use a reachable mirror",
    )


def uv_bin() -> str:
    """The uv executable: on PATH (nox's uv backend puts it there), else the one the `uv` package carries."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]

        return str(find_uv_bin())
    except Exception:
        raise PipelineError(
            "uv is not installed", fix="install it with `python -m pip install uv` (nox[uv] brings it)"
        ) from None


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    error: type[PipelineError] = PipelineError,
    what: str | None = None,
    fix: str | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a program; on failure raise ``error`` with its last output lines, never a bare CalledProcessError."""
    argv = [str(c) for c in cmd]
    result = subprocess.run(
        argv,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout or "").strip().splitlines()[-25:])
        raise error(
            f"{what or 'Command'} failed (exit {result.returncode}): {shlex.join(argv)}"
            + (f"\n--- last output ---\n{tail}\n---" if tail else ""),
            fix=fix,
        )
    return result


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be used without swapping), else total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class TreeMemorySampler:
    """Peak RSS of a process and all its descendants, sampled on a thread while the block runs.

    The kernel keeps a peak per process (and getrusage one for the largest child), never one for a whole tree of
    compilers running side by side, which is what decides whether a build fits in memory.
    """

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_tree = 0  # bytes: the most the tree held at once
        self.peak_process = 0  # bytes: the most one process of it held
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while True:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peak_process = max(self.peak_process, rss)
            self.peak_tree = max(self.peak_tree, total)
            if self._stop.wait(self.interval):
                return
