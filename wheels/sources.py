"""Sources: sdists pinned by sha256 (downloaded once into the cache), or folders in this repository."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

from .errors import SourceError
from .options import REPO_ROOT, Target
from .util import download, sha256_file, tree_hash


def source_dir(target: Target) -> Path:
    path = Path(target.source.location)
    return path if path.is_absolute() else REPO_ROOT / path


def source_hash(target: Target) -> str:
    """The sdist's pinned sha256, or a content hash of the folder: what the cache key covers."""
    if target.source.kind != "path":  # an sdist or a wheel: its pin
        assert target.source.sha256
        return target.source.sha256
    folder = source_dir(target)
    if not folder.is_dir():
        raise SourceError(f"Source folder {folder} of target {target.name} does not exist")
    return tree_hash(folder)


def fetch(target: Target, cache_dir: Path) -> Path:
    """The sdist or wheel file in the cache (downloaded and verified when absent), or the source folder."""
    if target.source.kind == "path":
        return source_dir(target)
    sha = target.source.sha256
    assert sha
    dest = cache_dir / "sources" / sha[:2] / sha / target.source.filename
    if dest.exists():
        if sha256_file(dest) == sha:
            return dest
        dest.unlink()  # a corrupted cache entry: fetch it again
    return download(target.source.location, dest, sha, what=f"the {target.package} {target.version} {target.source.kind}")


def unpack(archive_or_dir: Path, dest: Path) -> Path:
    """Unpack an sdist (or copy a folder) into dest; returns the project root (the folder with setup.py)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if archive_or_dir.is_dir():
        root = dest / archive_or_dir.name
        shutil.copytree(
            archive_or_dir, root, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
        )
        return root
    name = archive_or_dir.name
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        with tarfile.open(archive_or_dir) as tar:
            tar.extractall(dest, filter="data")
    elif name.endswith(".zip"):
        with zipfile.ZipFile(archive_or_dir) as zf:
            zf.extractall(dest)
    else:
        raise SourceError(f"Don't know how to unpack {archive_or_dir}", fix="use a .tar.gz or .zip sdist")
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest
