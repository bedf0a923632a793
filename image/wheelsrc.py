"""Where the locked wheels come from, and the preflight that proves every one is there before Docker starts.

A locked pin is satisfied by a file whose sha256 is one of the pin's hashes and whose tags fit the image's Python
and platform. The file may sit in a folder (the wheelhouse, the mirror of third-party wheels, the wheels built from
sdists: what the embedded index serves or a wheelhouse build bind-mounts) or on an index (``--index-url``).

Third-party wheels reach the embedded index through the mirror: :func:`mirror` downloads each locked file from the
upstream index that lists it (PyPI, the torch build's index), verified against the lock's hash. The preflight then
names every pin nothing can satisfy, and why: no file at all, only an sdist (the image never compiles), a file under
the right name with another hash (a rebuilt wheel: relock), or wheels for other platforms only.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

from wheels import log
from wheels.errors import ImageError
from wheels.util import atomic_write_json, download, file_lock, sha256_file

from .reqs import Pin, wheel_fits

ARCHIVES = (".whl", ".tar.gz", ".zip")


@dataclasses.dataclass(frozen=True)
class File:
    """A distribution file somewhere: a local path or a URL."""

    filename: str
    location: str
    sha256: str | None

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


def project_of(filename: str) -> str | None:
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[0])
        return str(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


@dataclasses.dataclass(frozen=True)
class Verdict:
    pin: Pin
    file: File | None  # the file that satisfies the pin
    problem: str | None = None  # why none does

    @property
    def ok(self) -> bool:
        return self.file is not None


def judge(pin: Pin, files: Iterable[File], tags: frozenset) -> Verdict:  # type: ignore[type-arg]
    """Pure: which of a project's files satisfies a pin, or the most telling reason why none does."""
    files = list(files)
    hashes = set(pin.hashes)
    for f in files:
        if f.sha256 in hashes and f.is_wheel and wheel_fits(f.filename, tags):
            return Verdict(pin, f)
    if any(f.sha256 in hashes and not f.is_wheel for f in files):
        return Verdict(pin, None, "only its sdist is available, and the image never compiles")
    if any(f.sha256 in hashes for f in files):
        return Verdict(pin, None, "its locked wheels do not fit the image's Python and platform")
    same_version = [f for f in files if f.is_wheel and _version_of(f.filename) == pin.version]
    if same_version:
        return Verdict(
            pin, None, f"{same_version[0].filename} is there, but with another sha256 than the lock's (rebuilt?)"
        )
    return Verdict(pin, None, "no file for it")


def _version_of(filename: str) -> str | None:
    try:
        return str(parse_wheel_filename(filename)[1])
    except InvalidWheelFilename:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Folders


class HashCache:
    """sha256 of local files, remembered by (size, mtime): the mirror holds gigabytes, hashed once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, list[object]] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = str(file.resolve())
        entry = self.data.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return str(entry[2])
        digest = sha256_file(file)
        self.data[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            live = {k: v for k, v in self.data.items() if Path(k).exists()}
            atomic_write_json(self.path, live)
            self.dirty = False


def scan_folders(folders: Sequence[Path], hashes: HashCache) -> dict[str, list[File]]:
    """Normalised project name -> its files, over every folder (recursively, as pypiserver serves them)."""
    found: dict[str, list[File]] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or not path.name.endswith(ARCHIVES) or path.name.startswith("."):
                continue
            project = project_of(path.name)
            if project is None:
                continue
            found.setdefault(project, []).append(File(path.name, str(path), hashes.sha256(path)))
    hashes.save()
    return found


def check_folders(pins: Sequence[Pin], folders: Sequence[Path], tags: frozenset, hashes: HashCache) -> list[Verdict]:  # type: ignore[type-arg]
    files = scan_folders(folders, hashes)
    return [judge(pin, files.get(pin.key, []), tags) for pin in pins]


# ---------------------------------------------------------------------------------------------------------------------
# Indexes


def index_files(reader: object, project: str) -> list[File]:
    """A project's files on an index, through wheels.publish.remote.IndexReader."""
    links = reader.links(project)  # type: ignore[attr-defined]
    return [File(link.filename, link.url, link.sha256) for link in links if not link.yanked]


def check_index(pins: Sequence[Pin], reader: object, tags: frozenset) -> list[Verdict]:  # type: ignore[type-arg]
    def listing(pin: Pin) -> list[File]:
        files = index_files(reader, pin.key)
        # An index that lists no hashes: download the pin's own files to learn theirs (the others cannot matter).
        return [
            dataclasses.replace(f, sha256=reader.sha256(_link(f)))  # type: ignore[attr-defined]
            if f.sha256 is None and _version_of(f.filename) == pin.version
            else f
            for f in files
        ]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        listings = list(pool.map(listing, pins))
    return [judge(pin, files, tags) for pin, files in zip(pins, listings, strict=True)]


def _link(file: File) -> object:
    from wheels.publish.simple import Link

    return Link(file.filename, file.location, None)


def reader_for(url: str, username: str | None = None, password: str | None = None) -> object:
    from wheels.publish.credentials import Credentials
    from wheels.publish.remote import IndexReader

    creds = Credentials(username, password, source="IMAGE_INDEX_USERNAME/IMAGE_INDEX_PASSWORD") if username else None
    return IndexReader(url, creds)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# The preflight's verdict


def raise_missing(verdicts: Sequence[Verdict], ours: Iterable[str], where: str, lock: Path) -> None:
    """One error naming every unsatisfied pin, ours first, with the next step for each kind."""
    bad = [v for v in verdicts if not v.ok]
    if not bad:
        return
    keys = set(ours)
    mine = [v for v in bad if v.pin.key in keys]
    theirs = [v for v in bad if v.pin.key not in keys]
    lines = [f"{v.pin}: {v.problem}" for v in mine + theirs]
    fixes = []
    if mine:
        fixes.append(
            "our wheels: build them (`nox -s wheels -- TARGET`); if they were rebuilt after the lock was made, "
            "remake the lock (`nox -s lock`) so it names the new files"
        )
    if any("sdist" in (v.problem or "") for v in theirs):
        fixes.append("sdist-only projects: `nox -s lock` turns pure-Python ones into wheels; others need a recipe")
    if theirs:
        fixes.append(
            "third-party wheels: the embedded index serves what `nox -s image` downloads into its mirror; "
            "with --index-url, upload them to that index"
        )
    raise ImageError(
        f"{len(bad)} of the {len(verdicts)} locked wheel(s) are not available from {where}; "
        f"nothing was built (the image installs prebuilt wheels only):\n  " + "\n  ".join(lines),
        why=f"the lock {lock} names files by sha256, and the build may only install those",
        fix="; ".join(fixes),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Mirroring third-party wheels


def mirror(
    pins: Sequence[Pin],
    upstream: Sequence[str],
    dest: Path,
    tags: frozenset,  # type: ignore[type-arg]
    hashes: HashCache,
    *,
    present: Sequence[Path] = (),
    workers: int = 4,
) -> list[str]:
    """Download into ``dest`` every pin that no folder in ``present`` (nor dest) satisfies. Returns what was fetched.

    Each file is looked up by hash on the upstream indexes in order and verified while downloading. A pin found
    nowhere is only warned about here: the preflight that follows names it, with every source considered.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{dest.name}.lock", f"the wheel mirror {dest}"):
        have = check_folders(pins, [dest, *present], tags, hashes)
        todo = [v.pin for v in have if not v.ok]
        if not todo:
            return []
        readers = [reader_for(url) for url in upstream]

        def look_up(pin: Pin) -> Verdict:
            verdict = Verdict(pin, None, "not listed")
            for reader in readers:
                verdict = judge(pin, index_files(reader, pin.key), tags)
                if verdict.ok:
                    break
            return verdict

        plan: list[tuple[Pin, File]] = []
        with log.step(f"Looking up {len(todo)} locked wheel(s) on {', '.join(upstream)}"):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                verdicts = list(pool.map(look_up, todo))
            for verdict in verdicts:
                if verdict.ok and verdict.file is not None:
                    plan.append((verdict.pin, verdict.file))
                else:  # the preflight decides, knowing every place a wheel may come from
                    where = ", ".join(upstream)
                    log.warn(f"{verdict.pin} is not on {where} as a wheel for the image: {verdict.problem}")
        if not plan:
            return []
        total = 0
        with log.step(f"Downloading {len(plan)} wheel(s) into {dest}"):

            def fetch(item: tuple[Pin, File]) -> int:
                pin, file = item
                target = dest / file.filename
                download(file.location, target, file.sha256, what=str(pin))
                return target.stat().st_size

            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for size in pool.map(fetch, plan):
                    total += size
        log.info(f"downloaded {len(plan)} wheel(s), {log.fmt_bytes(total)}")
        return [f.filename for _, f in plan]


def link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        import shutil

        shutil.copyfile(src, dest)


def files_for(verdicts: Sequence[Verdict]) -> Mapping[Pin, Path]:
    return {v.pin: Path(v.file.location) for v in verdicts if v.file is not None}
