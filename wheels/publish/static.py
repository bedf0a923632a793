"""A static PEP 503 index in a folder, for object storage or any web server.

Layout (every link relative, so the folder can be served from any prefix, or from ``file://``)::

    DIR/simple/index.html                 the project list
    DIR/simple/<project>/index.html       links ../../packages/<file>#sha256=<hex>, with PEP 658/714 metadata hashes
    DIR/packages/<file>                   the wheels
    DIR/packages/<file>.metadata          each wheel's METADATA (PEP 658), so resolvers need not download wheels
    DIR/.static-index.json                what this pipeline wrote: filename -> sha256 (how a re-run knows the folder)

The new tree is built beside DIR and renamed into place: a reader sees the old index or the new one, never a mix.
Rendering is pure; :func:`write` is the only function that touches the disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import html
import json
import os
import shutil
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.utils import parse_wheel_filename

from ..errors import ConfigError, PublishError
from ..util import sha256_file
from ..wheelfile import dist_info_dir
from .simple import normalize

MARKER = ".static-index.json"
SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class StaticFile:
    filename: str
    sha256: str
    metadata_sha256: str | None = None
    requires_python: str | None = None

    @property
    def project(self) -> str:
        return normalize(str(parse_wheel_filename(self.filename)[0]))


def _page(title: str, body: Iterable[str]) -> str:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta name="pypi:repository-version" content="1.1">',
        f"    <title>{html.escape(title)}</title>",
        "  </head>",
        "  <body>",
        *(f"    {line}" for line in body),
        "  </body>",
        "</html>",
        "",
    ]
    return "\n".join(lines)


def render_root(projects: Iterable[str]) -> str:
    """The PEP 503 root page: one link per normalised project name."""
    names = sorted({normalize(p) for p in projects})
    return _page("Simple index", (f'<a href="{html.escape(n)}/">{html.escape(n)}</a><br>' for n in names))


def render_project(project: str, files: Iterable[StaticFile]) -> str:
    """A PEP 503 project page: relative links with sha256 fragments; PEP 658/714 metadata hashes when known."""
    lines = [f"<h1>Links for {html.escape(normalize(project))}</h1>"]
    for f in sorted(files, key=lambda f: f.filename):
        href = f"../../packages/{urllib.parse.quote(f.filename, safe='')}#sha256={f.sha256}"
        attrs = [f'href="{html.escape(href)}"']
        if f.requires_python:
            attrs.append(f'data-requires-python="{html.escape(f.requires_python)}"')
        if f.metadata_sha256:
            # PEP 714 renamed the attribute; pip < 23.2 reads only the PEP 658 spelling, so write both.
            attrs.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
            attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
        lines.append(f"<a {' '.join(attrs)}>{html.escape(f.filename)}</a><br>")
    return _page(f"Links for {normalize(project)}", lines)


def wheel_metadata(wheel: Path) -> bytes:
    """The METADATA file of a wheel, byte for byte (PEP 658 serves exactly these bytes)."""
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(f"{dist_info_dir(zf.namelist())}/METADATA")


def _requires_python(metadata: bytes) -> str | None:
    import email.parser

    value = email.parser.BytesParser().parsebytes(metadata, headersonly=True).get("Requires-Python")
    return str(value).strip() if value else None


def read_existing(root: Path) -> dict[str, str]:
    """filename -> sha256 of the wheels a previous run wrote into root; {} when root does not exist yet."""
    _recover(root)
    if not root.exists():
        return {}
    marker = root / MARKER
    if not marker.exists():
        if any(root.iterdir()):
            raise ConfigError(
                f"{root} exists, is not empty and is not a static index written by this pipeline (no {MARKER})",
                why="writing the index replaces the whole folder, which would delete what is there",
                fix="choose a new or empty folder for --static",
            )
        return {}
    try:
        data = json.loads(marker.read_text())
        files: dict[str, str] = dict(data["files"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{marker} is damaged ({e})", fix=f"delete {root} and publish again") from None
    for name, sha in files.items():
        path = root / "packages" / name
        if not path.exists() or sha256_file(path) != sha:
            raise PublishError(
                f"The static index {root} is damaged: {name} is missing or differs from its recorded sha256",
                why="a file in the folder was changed or deleted by hand",
                fix=f"delete {root} and publish again",
            )
    return files


def _recover(root: Path) -> None:
    """A run killed between its two renames leaves the old tree beside a missing root: put it back."""
    if root.exists():
        return
    olds = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.exists() else []
    if olds:
        os.replace(olds[-1], root)


def _place(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # same filesystem: no copy, and the source is never modified in place
    except OSError:
        shutil.copyfile(src, dest)


def write(root: Path, wheels: Mapping[str, Path], existing: Mapping[str, str]) -> list[StaticFile]:
    """Write an index of existing + new wheels to root, atomically. ``wheels``: filename -> verified local file."""
    root = root.resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.new-", dir=root.parent))
    try:
        packages = staging / "packages"
        packages.mkdir()
        entries: list[StaticFile] = []
        sources = {name: root / "packages" / name for name in existing} | dict(wheels)
        for name, src in sorted(sources.items()):
            dest = packages / name
            _place(src, dest)
            metadata = wheel_metadata(dest)
            (packages / f"{name}.metadata").write_bytes(metadata)
            entries.append(
                StaticFile(
                    filename=name,
                    sha256=sha256_file(dest),
                    metadata_sha256=hashlib.sha256(metadata).hexdigest(),
                    requires_python=_requires_python(metadata),
                )
            )
        by_project: dict[str, list[StaticFile]] = {}
        for entry in entries:
            by_project.setdefault(entry.project, []).append(entry)
        simple = staging / "simple"
        simple.mkdir()
        (simple / "index.html").write_text(render_root(by_project))
        for project, files in by_project.items():
            (simple / project).mkdir()
            (simple / project / "index.html").write_text(render_project(project, files))
        marker = {"schema": SCHEMA, "files": {e.filename: e.sha256 for e in entries}}
        (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        for path in [staging, *staging.rglob("*")]:  # mkdtemp makes 0700; an index is for reading by others
            path.chmod(0o755 if path.is_dir() else 0o644)
        _swap(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return entries


def _swap(new: Path, root: Path) -> None:
    if not root.exists():
        os.replace(new, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.rmdir(old)
    os.replace(root, old)
    try:
        os.replace(new, root)
    except BaseException:
        os.replace(old, root)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
