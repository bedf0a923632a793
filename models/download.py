"""Plan and fetch: skip what is verified, check the disk, download in parallel, verify, then move into place.

Invariants (what a user can rely on):
- A file appears under its final name only after its sha256 matched the manifest, or the hub's LFS sha256 when the
  manifest has none; it is renamed into place from a partial file on the same volume, so never half-written.
- Partial files live in ``DEST/.models/partial``, named after the content they will become, and are resumed with a
  Range request on the next run; a bad one (wrong hash) is deleted.
- Every target has a lock in ``DEST/.models/locks``: two downloaders on one volume never write the same file; the
  second one waits, then finds it verified and skips it.
- A verified file is skipped on later runs from its record alone (no hashing, no network).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import fsutil, hub, log, state
from .errors import ConfigError, DiskSpaceError, IntegrityError, ModelsError
from .hub import Remote
from .manifest import ModelFile
from .options import Options
from .progress import FileProgress, Progress

STATE_DIR = ".models"
HEADROOM_MIN = 16 << 20  # filesystem metadata, the records, a little slack
# After Ctrl-C, transfers stop at their next write. One blocked in a read from a slow or stalled server (a write
# comes after each hub.CHUNK_SIZE read, or a read timeout) gets this long; then it is abandoned and
# ``python -m models`` exits anyway.
CANCEL_GRACE_S = 2.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    entry: ModelFile
    target: Path
    action: str  # "skipped" (verified before), "downloaded", "adopted" (present, hashed, matched)
    sha256: str
    bytes_fetched: int = 0
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What the bytes must hash to, and on whose word."""

    against: str
    sha256: str | None = None
    git_sha1: str | None = None
    sha256_prefix: str | None = None

    def matches(self, digests: fsutil.Digests) -> bool:
        if self.sha256 is not None:
            return digests.sha256.hexdigest() == self.sha256
        if self.git_sha1 is not None:
            return digests.git_sha1 is not None and digests.git_sha1.hexdigest() == self.git_sha1
        assert self.sha256_prefix is not None
        return digests.sha256.hexdigest().startswith(self.sha256_prefix)

    @property
    def tag(self) -> str:
        """A short content tag for the partial file's name: a partial is only ever resumed for the same content."""
        return (self.sha256 or self.git_sha1 or self.sha256_prefix or "")[:16]

    @property
    def wanted(self) -> str:
        if self.sha256 is not None:
            return f"sha256 {self.sha256}"
        if self.git_sha1 is not None:
            return f"git blob sha1 {self.git_sha1}"
        return f"a sha256 starting with {self.sha256_prefix}"


def expectation(entry: ModelFile, remote: Remote | None) -> Expectation:
    lfs = remote.lfs_sha256 if remote else None
    if entry.sha256 is not None:
        if lfs is not None and lfs != entry.sha256:
            raise IntegrityError(
                f"The manifest's sha256 for {entry.name} does not match the hub's",
                why=f"manifest: {entry.sha256}; hub ({entry.origin}): {lfs}. The file changed upstream at revision "
                f'"{entry.revision}", or the manifest is wrong',
                fix="pin the revision to the commit the manifest's hash came from, or update the manifest's sha256",
            )
        return Expectation("manifest sha256", sha256=entry.sha256)
    if lfs is not None:
        return Expectation("hub LFS sha256", sha256=lfs)
    if remote is not None and remote.git_sha1 is not None and remote.size is not None:
        return Expectation("hub git blob sha1", git_sha1=remote.git_sha1)
    if entry.sha256_prefix is not None:
        return Expectation("publisher's sha256 prefix", sha256_prefix=entry.sha256_prefix)
    raise IntegrityError(
        f"{entry.name} cannot be verified: the manifest has no sha256 and the server gave no hash",
        why=f"{entry.origin} answered without an LFS sha256 ETag (a mirror that drops it?)",
        fix="add sha256 to the manifest entry, or use an endpoint that sends X-Linked-Etag",
    )


class Cancelled(BaseException):
    """Raised in download threads after Ctrl-C; a BaseException so that no retry loop catches it."""


class HashingWriter:
    """A file wrapper that hashes and counts every byte written, for ``hub.fetch``.

    If the server ignores a Range request, ``hub.fetch`` seeks back and truncates: then the digests restart from
    the bytes still in the file, so the hash always describes exactly the file's content.
    """

    def __init__(
        self,
        f: Any,
        path: Path,
        digests: fsutil.Digests,
        on_bytes: Callable[[int], None],
        cancelled: threading.Event | None = None,
    ) -> None:
        self._f = f
        self._path = path
        self.digests = digests
        self._on_bytes = on_bytes
        self._cancelled = cancelled

    def write(self, data: bytes) -> int:
        if self._cancelled is not None and self._cancelled.is_set():
            raise Cancelled("interrupted")  # Ctrl-C in the main thread: stop this transfer now, keep the partial
        n = self._f.write(data)
        self.digests.update(data)
        self._on_bytes(len(data))
        return n

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        new = self._f.tell() if size is None else size
        result = self._f.truncate(new)
        if new != self.digests.count:
            self._f.flush()
            dropped = self.digests.count - new
            self.digests.reset()
            fsutil.hash_prefix(self._path, new, self.digests)
            self._on_bytes(-dropped)
        return result

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()


def _git_size(remote: Remote | None, exp: Expectation) -> int | None:
    return remote.size if exp.git_sha1 is not None and remote is not None else None


class Downloader:
    def __init__(
        self,
        options: Options,
        *,
        disk_free: Callable[[Path], int] = fsutil.disk_free,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if options.dest is None:
            raise ConfigError("No destination folder", fix="pass --dest")
        self.options = options
        self.dest: Path = options.dest
        self.disk_free = disk_free
        self.sleep = sleep
        self.state_dir = self.dest / STATE_DIR
        self.progress: Progress | None = None
        self.cancelled = threading.Event()

    # --- paths ------------------------------------------------------------------------------------------------------

    def target(self, entry: ModelFile) -> Path:
        return self.dest / entry.relpath

    def lock_path(self, entry: ModelFile) -> Path:
        key = hashlib.sha256(str(entry.relpath).encode()).hexdigest()[:16]
        return self.state_dir / "locks" / f"{entry.filename}.{key}.lock"

    def partial_path(self, entry: ModelFile, exp: Expectation) -> Path:
        return self.state_dir / "partial" / f"{entry.filename}.{exp.tag}.part"

    def _drop_stale_partials(self, entry: ModelFile, keep: Path) -> None:
        """Partials of this target for other content (an older revision) can never be resumed: delete them."""
        folder = keep.parent
        if not folder.is_dir():
            return
        for stale in folder.glob(f"{entry.filename}.*.part"):
            if stale != keep and stale.name.count(".") == keep.name.count("."):
                log.info(f"{entry.name}: deleting a partial download of other content ({stale.name})")
                stale.unlink(missing_ok=True)

    # --- the run ----------------------------------------------------------------------------------------------------

    def run(self) -> list[Outcome]:
        opts = self.options
        files = opts.manifest.select(opts.variants)
        expanded = opts.manifest.expand(opts.variants or opts.manifest.default_variants)
        log.info(f"variants {', '.join(expanded)}: {len(files)} files into {self.dest}")
        if opts.transport == "xet":
            hub.require_xet()
        self.dest.mkdir(parents=True, exist_ok=True)

        outcomes: list[Outcome] = []
        todo: list[ModelFile] = []
        for entry in files:
            ok, reason = state.check(self.target(entry), entry)
            if ok:
                record = state.read(self.target(entry))
                assert record is not None
                outcomes.append(Outcome(entry, self.target(entry), "skipped", record.sha256))
            else:
                todo.append(entry)
                if reason != "missing":
                    log.info(f"{entry.name}: {reason}; it will be checked again")
        if outcomes:
            log.info(f"{len(outcomes)} already present and verified (not re-hashed): "
                     + ", ".join(o.entry.name for o in outcomes))
        if not todo:
            log.info("nothing to download")
            return outcomes

        with log.step(f"Asking {opts.endpoint} about {len(todo)} file(s)"):
            remotes = self._resolve_all(todo)
            expectations = {e.name: expectation(e, remotes[e.name]) for e in todo}
            for e in todo:
                self._check_remote(e, remotes[e.name])

        remaining = self._check_disk(todo, remotes, expectations)
        self.progress = Progress(remaining, opts.progress)
        start = time.monotonic()
        try:
            outcomes.extend(self._fetch_all(todo, remotes, expectations))
        finally:
            self.progress.close()
        fetched = sum(o.bytes_fetched for o in outcomes)
        log.info(f"fetched {log.fmt_bytes(fetched)} in {log.fmt_seconds(time.monotonic() - start)}; "
                 f"{len(outcomes)} file(s) verified in {self.dest}")
        return outcomes

    def _parallel(self, func: Callable[[ModelFile], Any], entries: list[ModelFile]) -> dict[str, Any]:
        """Run ``func`` over entries on ``jobs`` threads; on the first failure let running ones end, start no more,
        and raise that failure (after logging every other one)."""
        results: dict[str, Any] = {}
        errors: list[BaseException] = []
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(self.options.jobs, len(entries)))
        interrupted = False
        try:
            futures = {pool.submit(func, e): e for e in entries}
            try:
                for future in concurrent.futures.as_completed(futures):
                    entry = futures[future]
                    try:
                        results[entry.name] = future.result()
                    except Cancelled:
                        continue
                    except BaseException as e:  # noqa: BLE001 - re-raised below, after the others are told
                        if not errors:
                            for other in futures:
                                other.cancel()
                        errors.append(e)
                        if isinstance(e, ModelsError) and len(errors) > 1:
                            log.warn(f"also failed: {e.what}")
            except KeyboardInterrupt:
                interrupted = True
                self.cancelled.set()  # running transfers stop at their next write; partials stay for the next run
                running = [other for other in futures if not other.cancel()]
                concurrent.futures.wait(running, timeout=CANCEL_GRACE_S)
                raise
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        if errors:
            raise errors[0]
        return results

    def _with_retries(self, entry: ModelFile, what: str, func: Callable[[], Any]) -> Any:
        attempts = self.options.retries
        for attempt in range(1, attempts + 1):
            try:
                return func()
            except Exception as exc:  # noqa: BLE001 - classified: unexpected ones are re-raised by classify
                failure = hub.classify(exc, entry, self.options.endpoint)
                if not failure.retry:
                    raise failure.error from None
                if attempt == attempts:
                    err = failure.error
                    raise type(err)(
                        f"{err.what.rstrip('.')} ({what}; gave up after {attempts} attempts)",
                        why=err.why,
                        fix="check the network or HF_ENDPOINT (a mirror?) and run again: finished bytes are kept "
                        "and the download resumes",
                    ) from None
                delay = min(self.options.retry_max_s, self.options.retry_base_s * 2 ** (attempt - 1))
                log.warn(f"{entry.name}: {failure.error.what} ({what}); retry {attempt}/{attempts - 1} in "
                         f"{log.fmt_seconds(delay)}")
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _resolve(self, entry: ModelFile) -> Remote:
        return self._with_retries(
            entry, "asking for metadata", lambda: hub.resolve(entry, self.options.endpoint, self.options.token)
        )

    def _resolve_all(self, todo: list[ModelFile]) -> dict[str, Remote]:
        return self._parallel(self._resolve, todo)

    def _check_remote(self, entry: ModelFile, remote: Remote) -> None:
        if entry.pinned and remote.commit and remote.commit != entry.revision:
            raise IntegrityError(
                f"{entry.name}: asked for commit {entry.revision}, the server answered with commit {remote.commit}",
                fix="check HF_ENDPOINT: a mirror that ignores revisions cannot serve pinned files",
            )
        if entry.size is not None and remote.size is not None and entry.size != remote.size:
            raise IntegrityError(
                f"{entry.name}: the manifest says {entry.size} bytes, {entry.origin} has {remote.size}",
                fix="pin the revision the manifest's size came from, or correct the manifest",
            )
        if not entry.pinned and remote.commit:
            log.info(f"{entry.name}: {entry.repo}@{entry.revision} is commit {remote.commit}")

    def _check_disk(
        self, todo: list[ModelFile], remotes: dict[str, Remote], exps: dict[str, Expectation]
    ) -> int:
        """Free space must cover the bytes still to come (partials count as done; files another downloader is
        fetching right now are its business). Returns the bytes to download."""
        remaining = 0
        unknown: list[str] = []
        for entry in todo:
            if fsutil.is_locked(self.lock_path(entry)):
                log.info(f"{entry.name}: another downloader is fetching it; this one will wait for it")
                continue
            size = remotes[entry.name].size or entry.size
            if size is None:
                unknown.append(entry.name)
                continue
            partial = self.partial_path(entry, exps[entry.name])
            done = partial.stat().st_size if partial.exists() else 0
            remaining += max(0, size - done)
        free = self.disk_free(self.dest)
        need = remaining + (max(HEADROOM_MIN, remaining // 100) if remaining else 0)
        if unknown:
            log.warn(f"sizes unknown for {', '.join(unknown)}: the free-space check cannot count them")
        log.info(f"{log.fmt_bytes(remaining)} to download; {log.fmt_bytes(free)} free in {self.dest}")
        if need > free:
            raise DiskSpaceError(
                f"Not enough free space in {self.dest}: {log.fmt_bytes(need)} needed "
                f"({remaining} bytes to download plus headroom), {log.fmt_bytes(free)} ({free} bytes) free",
                why="nothing was downloaded: the check runs before the first byte",
                fix="free space on the volume, use a larger volume, or choose fewer variants (--list shows sizes)",
            )
        return remaining

    def _fetch_all(
        self, todo: list[ModelFile], remotes: dict[str, Remote], exps: dict[str, Expectation]
    ) -> list[Outcome]:
        results = self._parallel(lambda e: self._fetch_one(e, remotes[e.name], exps[e.name]), todo)
        return [results[e.name] for e in todo]

    # --- one file ---------------------------------------------------------------------------------------------------

    def _fetch_one(self, entry: ModelFile, remote: Remote, exp: Expectation) -> Outcome:
        target = self.target(entry)
        with fsutil.file_lock(self.lock_path(entry), entry.name):
            ok, _ = state.check(target, entry)
            if ok:  # another downloader finished it while this one waited for the lock
                record = state.read(target)
                assert record is not None
                log.info(f"{entry.name}: verified by another downloader meanwhile; skipped")
                return Outcome(entry, target, "skipped", record.sha256)
            if target.exists():
                adopted = self._adopt(entry, target, remote, exp)
                if adopted is not None:
                    return adopted
            return self._download(entry, target, remote, exp)

    def _adopt(self, entry: ModelFile, target: Path, remote: Remote, exp: Expectation) -> Outcome | None:
        """A file already there without a valid record (copied in, or touched): keep it if its hash is right."""
        log.info(f"{entry.name}: hashing the file already at {target}")
        digests = fsutil.sha256_file(target, git_size=_git_size(remote, exp))
        if exp.matches(digests):
            state.write(target, entry, digests.sha256.hexdigest(), remote.commit, exp.against)
            log.info(f"{entry.name}: the present file matches the {exp.against}; kept")
            return Outcome(entry, target, "adopted", digests.sha256.hexdigest())
        log.warn(f"{entry.name}: the present file does not match the {exp.against}; downloading it again")
        state.remove(target)
        return None

    def _download(self, entry: ModelFile, target: Path, remote: Remote, exp: Expectation) -> Outcome:
        partial = self.partial_path(entry, exp)
        partial.parent.mkdir(parents=True, exist_ok=True)
        self._drop_stale_partials(entry, partial)
        start = time.monotonic()
        before = partial.stat().st_size if partial.exists() else 0
        size = remote.size
        log.info(f"{entry.name}: fetching {log.fmt_bytes(size) if size is not None else 'unknown size'} from "
                 f"{entry.origin}" + (f", resuming at {log.fmt_bytes(before)}" if before else ""))

        use_xet = self.options.transport == "xet" and remote.xet is not None
        if self.options.transport == "xet" and not use_xet:
            log.info(f"{entry.name}: {entry.origin} is not stored on Xet; fetching it over HTTP")
        current = remote

        def attempt() -> fsutil.Digests:
            nonlocal current
            try:
                return self._transfer_xet(entry, current, partial, exp) if use_xet else \
                    self._transfer_http(entry, current, partial, exp)
            except Exception:
                # A signed CDN URL may have expired by the next attempt: ask the hub again first.
                with contextlib.suppress(Exception):
                    current = hub.resolve(entry, self.options.endpoint, self.options.token)
                raise

        try:
            digests = self._with_retries(entry, "downloading", attempt)
        except DiskSpaceError:
            partial.unlink(missing_ok=True)  # the disk is full: the partial is what must go
            raise
        got = partial.stat().st_size
        if size is not None and got != size:
            partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{entry.name}: received {got} bytes, the server announced {size}; the partial file was deleted",
                fix="run again; if it persists, check HF_ENDPOINT (a proxy that alters responses?)",
            )
        if not exp.matches(digests):
            partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{entry.name}: the downloaded bytes have sha256 {digests.sha256.hexdigest()}, "
                f"but the {exp.against} is {exp.wanted}",
                why="the transfer was corrupted or tampered with, or the manifest's hash is wrong; "
                "the bad file was deleted and nothing was put in place",
                fix="run again; if it fails the same way, check the manifest entry "
                f"[files.{entry.name}] and HF_ENDPOINT",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        fsutil.fsync_dir(target.parent)
        sha = digests.sha256.hexdigest()
        state.write(target, entry, sha, current.commit, exp.against)
        seconds = time.monotonic() - start
        fetched = got - before
        rate = f" ({log.fmt_bytes(fetched / seconds)}/s)" if seconds > 0.5 else ""
        log.info(f"{entry.name}: {log.fmt_bytes(got)} verified against the {exp.against} in "
                 f"{log.fmt_seconds(seconds)}{rate} -> {target}")
        return Outcome(entry, target, "downloaded", sha, fetched, seconds)

    def _transfer_http(self, entry: ModelFile, remote: Remote, partial: Path, exp: Expectation) -> fsutil.Digests:
        size = remote.size
        existing = partial.stat().st_size if partial.exists() else 0
        if size is not None and existing > size:
            partial.unlink()
            existing = 0
        digests = fsutil.Digests(_git_size(remote, exp))
        if existing:
            fsutil.hash_prefix(partial, existing, digests)  # one read of what is there: still one pass overall
        bar = self._bar(entry, size, existing)
        try:
            with partial.open("r+b" if partial.exists() else "w+b") as f:
                f.seek(existing)
                writer = HashingWriter(f, partial, digests, bar.update, self.cancelled)
                if size is None or existing < size:
                    hub.fetch(remote, writer, existing, entry.filename)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
        finally:
            bar.close()
        return digests

    def _transfer_xet(self, entry: ModelFile, remote: Remote, partial: Path, exp: Expectation) -> fsutil.Digests:
        partial.unlink(missing_ok=True)  # hf_xet writes the whole file itself; it resumes from its chunk cache
        try:
            hub.fetch_xet(remote, partial, entry.filename)
        except BaseException:
            partial.unlink(missing_ok=True)  # not a prefix of the file: never to be resumed over HTTP
            raise
        log.info(f"{entry.name}: hashing the file hf_xet assembled")
        bar = self._bar(entry, remote.size, 0)
        try:
            return fsutil.sha256_file(partial, on_bytes=None, git_size=_git_size(remote, exp))
        finally:
            bar.close()

    def _bar(self, entry: ModelFile, size: int | None, initial: int) -> FileProgress:
        if self.progress is None:
            return FileProgress(None, None, None)
        return self.progress.file(entry.filename, size, initial)


def run(options: Options, **kwargs: Any) -> list[Outcome]:
    return Downloader(options, **kwargs).run()
