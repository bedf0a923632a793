"""The build context, staged: exactly the files the Dockerfile reads, in a stable folder per profile and torch build.

Stable, because BuildKit sends a context incrementally when its folder and files' metadata are unchanged: a rebuild
resends nothing, and a wheelhouse build's gigabytes of (hard-linked) wheels travel once. Deterministic, because
BuildKit keys a COPY or a bind mount by content: the same inputs give the same cache keys, so a build with no
changes reuses every layer.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from wheels.errors import ImageError
from wheels.util import atomic_write_text

from . import sources
from .config import IMAGE_DIR, REPO_ROOT
from .reqs import Pin, render_requirements
from .wheelsrc import link_or_copy

SMOKE = IMAGE_DIR / "smoke.py"
RUNTIME = IMAGE_DIR / "runtime"
MODELS = REPO_ROOT / "models"


def uv_binary() -> Path:
    """The real uv executable (the `uv` package's binary; PATH entries may be shims): it is bind-mounted into builds."""
    candidates: list[Path] = []
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]

        candidates.append(Path(find_uv_bin()))
    except Exception:
        pass
    found = shutil.which("uv")
    if found:
        candidates.append(Path(found).resolve())
    for path in candidates:
        try:
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    return path
        except OSError:
            continue
    raise ImageError(
        "No uv executable to put into the build",
        why="the image's installs run uv from the build host (bind-mounted, never part of the image)",
        fix="install the pinned uv in this environment (`nox -s image` does: it is in constraints.txt)",
    )


def _copy_package(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests", ".pytest_cache"))
    else:
        dest.mkdir(parents=True)


def stage(
    ctx: Path,
    *,
    third: Sequence[Pin],
    ours: Sequence[Pin],
    expect: Mapping[str, object],
    trees: Iterable[sources.SourceTree] = (),
    wheel_files: Mapping[Pin, Path] | None = None,
) -> Path:
    """(Re)create the context folder. ``wheel_files``: for wheelhouse builds, the file that satisfies each pin."""
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    (ctx / "lock").mkdir()
    atomic_write_text(ctx / "lock" / "thirdparty.txt", render_requirements(third))
    atomic_write_text(ctx / "lock" / "ours.txt", render_requirements(ours))
    (ctx / "tools").mkdir()
    uv = ctx / "tools" / "uv"
    shutil.copy2(uv_binary(), uv)
    os.chmod(uv, 0o755)
    for group, pins in (("thirdparty", third), ("ours", ours)):
        folder = ctx / "wheels" / group
        folder.mkdir(parents=True)
        if wheel_files is not None:
            for pin in pins:
                src = wheel_files[pin]
                link_or_copy(src, folder / src.name)
    trees = list(trees)
    if trees:
        (ctx / "sources" / "nodes").mkdir(parents=True)
        for tree in trees:
            dest = ctx / "sources" / ("ComfyUI" if tree.pin.kind == "comfyui" else f"nodes/{tree.pin.name}")
            sources.copy_tree(tree.path, dest)
    _copy_package(RUNTIME, ctx / "runtime")
    _copy_package(MODELS, ctx / "models")
    (ctx / "smoke").mkdir()
    shutil.copy2(SMOKE, ctx / "smoke" / "smoke.py")
    atomic_write_text(ctx / "smoke" / "expect.json", json.dumps(expect, indent=2, sort_keys=True) + "\n")
    return ctx
