"""ComfyUI and the node packs as folders: fetched by commit into a cache, or a local folder given instead.

A fetch is ``git fetch --depth 1 <repo> <commit>`` into a temporary folder, checked (HEAD must be the pin), stripped of
``.git`` and renamed into ``<cache>/sources/<name>-<commit>``: an interrupted fetch leaves nothing that looks complete.
A local folder is used as it is; when it is a git checkout, its commit is compared with the pin and reported.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from wheels import log
from wheels.errors import SourceError
from wheels.util import atomic_write_json, file_lock, run, tree_hash

from .config import SourcePin

# What never goes into the image from a source tree.
IGNORED = (".git", "__pycache__", "*.pyc", ".github", ".DS_Store")
IGNORED_DIRS = (".git", "__pycache__", ".github")


@dataclasses.dataclass(frozen=True)
class SourceTree:
    pin: SourcePin
    path: Path
    origin: str  # "fetched" | "local"
    commit: str | None  # the tree's commit when known (the pin for fetches; git HEAD for local checkouts)
    dirty: bool = False

    @property
    def matches_pin(self) -> bool:
        return self.commit == self.pin.commit and not self.dirty

    @functools.cached_property
    def digest(self) -> str:
        """A content hash of the tree (what a local folder that is not a git checkout is identified by)."""
        return tree_hash(self.path, ignore=IGNORED_DIRS)

    def identity(self) -> str:
        """The commit when known and clean, else the tree's content hash."""
        if self.commit and not self.dirty:
            return self.commit
        return f"tree-sha256:{self.digest[:16]}"

    def describe(self) -> str:
        if self.origin == "fetched":
            return f"{self.pin.name} @ {self.pin.short} (fetched from {self.pin.repo})"
        state = (
            f"at {self.commit[:12]}" + (" with local changes" if self.dirty else "")
            if self.commit
            else "not a git checkout"
        )
        return f"{self.pin.name}: local folder {self.path} ({state}; pin {self.pin.short})"

    def record(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "path": str(self.path) if self.origin == "local" else None,
            "pin": self.pin.commit,
            "commit": self.commit,
            "dirty": self.dirty,
            "matches_pin": self.matches_pin,
            "identity": self.identity(),
        }

    def requirement_files(self) -> list[tuple[str, Path]]:
        """(label, path) of the requirement files this source contributes to the lock."""
        names = self.pin.requirements if self.pin.requirements is not None else ("requirements.txt",)
        found = []
        for name in names:
            path = self.path / name
            if path.is_file():
                found.append((f"{self.pin.name}/{name}", path))
            elif self.pin.requirements is not None:
                raise SourceError(
                    f"{self.pin.name} has no {name}, which image/nodes.toml lists as one of its requirement files",
                    fix=f"fix the requirements list of {self.pin.name} in image/nodes.toml, or the source folder",
                )
        return found


def _git_state(folder: Path) -> tuple[str | None, bool]:
    """(HEAD commit, has local changes) of a git work tree; (None, False) when the folder is not one."""
    if not (folder / ".git").exists():
        return None, False
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return head, bool(status)


def local(pin: SourcePin, folder: Path) -> SourceTree:
    commit, dirty = _git_state(folder)
    tree = SourceTree(pin=pin, path=folder.resolve(), origin="local", commit=commit, dirty=dirty)
    if commit and commit != pin.commit:
        log.warn(f"{tree.describe()}: the image records the folder's commit, not the pin")
    return tree


def fetch(pin: SourcePin, cache_dir: Path) -> SourceTree:
    root = cache_dir / "sources"
    dest = root / f"{pin.name}-{pin.commit}"
    marker = dest.parent / f".{dest.name}.complete.json"
    with file_lock(root / f".{dest.name}.lock", f"the source {pin.name}"):
        if marker.exists() and dest.is_dir():
            return SourceTree(pin=pin, path=dest, origin="fetched", commit=pin.commit)
        shutil.rmtree(dest, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{pin.name}-", dir=root))
        try:
            with log.step(f"Fetching {pin.name} @ {pin.short} from {pin.repo}"):
                fix = (
                    f"check the network and the pin in image/nodes.toml, or use a local folder: "
                    f"{pin.env_var}=/path or --source {pin.name}=/path"
                )
                run(["git", "init", "-q", tmp], error=SourceError, what="git init")
                run(
                    ["git", "-C", tmp, "fetch", "-q", "--depth", "1", "--no-tags", pin.repo, pin.commit],
                    error=SourceError,
                    what=f"Fetching {pin.name} @ {pin.short}",
                    fix=fix,
                )
                run(["git", "-C", tmp, "-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"],
                    error=SourceError, what=f"Checking out {pin.name}")  # fmt: skip
                head = run(["git", "-C", tmp, "rev-parse", "HEAD"], error=SourceError).stdout.strip()
                if head != pin.commit:
                    raise SourceError(f"{pin.repo} gave commit {head} for the pin {pin.commit} of {pin.name}")
                shutil.rmtree(tmp / ".git")
            tmp.rename(dest)
            atomic_write_json(marker, {"repo": pin.repo, "commit": pin.commit})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return SourceTree(pin=pin, path=dest, origin="fetched", commit=pin.commit)


def materialize(pins: Iterable[SourcePin], local_dirs: Mapping[str, Path], cache_dir: Path) -> list[SourceTree]:
    trees = []
    for pin in pins:
        folder = local_dirs.get(pin.name)
        trees.append(local(pin, folder) if folder is not None else fetch(pin, cache_dir))
    for tree in trees:
        log.info("source: " + tree.describe())
    return trees


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a source tree into the build context, leaving out VCS data and bytecode."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
