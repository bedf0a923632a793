"""Pure-Python sdists turned into wheels before the lock is resolved, so the image build never sees an sdist.

Some projects the image needs exist on PyPI only as sdists (mmpose's chumpy; fvcore and iopath for
comfyui_controlnet_aux). Each is downloaded (sha256 checked against the index), built with ``SOURCE_DATE_EPOCH`` and
the setuptools/wheel pinned in constraints.txt, so that anyone rebuilding it gets the same bytes and the lock's hash,
and accepted only when the result is a pure ``py3-none-any`` wheel: a project with compiled code needs a recipe in the
wheel pipeline instead. The wheels land in ``<cache>/wheels/built``, which the lock resolves from and the embedded
index serves.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from wheels import log
from wheels.envs import CONSTRAINTS
from wheels.errors import ImageError
from wheels.util import atomic_copy, download, run, uv_bin

from .config import SdistFix
from .reqs import is_pure

# 1980-01-01, the earliest time a zip entry can carry: what the wheel pipeline uses too.
SOURCE_DATE_EPOCH = "315532800"


@dataclasses.dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    url: str
    sha256: str | None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1].split("#", 1)[0]


def existing(built: Path, name: str, version: str) -> Path | None:
    for path in built.glob("*.whl"):
        dist, ver, _, _ = parse_wheel_filename(path.name)
        if dist == canonicalize_name(name) and str(ver) == version:
            return path
    return None


def build(sdist: Sdist, built: Path, cache_dir: Path, fix: SdistFix | None, python: str) -> Path:
    """Build one sdist into ``built`` (atomically); an already built wheel of that version is kept as it is."""
    done = existing(built, sdist.name, sdist.version)
    if done is not None:
        return done
    archive = download(
        sdist.url, cache_dir / "sdists" / sdist.filename, sdist.sha256, what=f"the sdist of {sdist.name}"
    )
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix=f"sdist-{sdist.name}-") as tmp:
        work, out = Path(tmp) / "src", Path(tmp) / "out"
        with log.step(f"Building a wheel of {sdist.name}=={sdist.version} from its sdist"):
            if fix and fix.build_requires:
                # Its build needs what it does not declare: build without isolation in an environment we make,
                # with the pinned setuptools/wheel plus the declared extras.
                venv = Path(tmp) / "venv"
                run([uv_bin(), "venv", "-q", "--python", python, venv], error=ImageError, what="Creating a build env")
                py = venv / "bin" / "python"
                run(
                    [uv_bin(), "pip", "install", "-q", "--python", py, "--constraint", CONSTRAINTS,
                     "setuptools", "wheel", "build", *fix.build_requires],
                    error=ImageError,
                    what=f"Installing build tools for {sdist.name}",
                )  # fmt: skip
                shutil.unpack_archive(archive, work)
                (root,) = [p for p in work.iterdir() if p.is_dir()]
                run([py, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, root], env=env,
                    error=ImageError, what=f"Building {sdist.name} from its sdist")  # fmt: skip
            else:
                run(
                    [uv_bin(), "build", "--wheel", "--python", python, "--build-constraints", CONSTRAINTS,
                     "--out-dir", out, archive],
                    env=env,
                    error=ImageError,
                    what=f"Building {sdist.name} from its sdist",
                    fix=f"if its build needs an undeclared tool, add [sdists.{sdist.name}] build-requires to "
                    "image/image.toml",
                )  # fmt: skip
        wheels = sorted(out.glob("*.whl"))
        if len(wheels) != 1:
            raise ImageError(f"Building {sdist.name} from its sdist gave {len(wheels)} wheels, not one")
        wheel = wheels[0]
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if name != canonicalize_name(sdist.name) or str(version) != sdist.version:
            raise ImageError(f"The sdist of {sdist.name}=={sdist.version} built {wheel.name}")
        if not is_pure(wheel.name):
            raise ImageError(
                f"{sdist.name}=={sdist.version} exists only as an sdist, and it is not pure Python ({wheel.name})",
                why="the image installs prebuilt wheels only, and a compiled wheel must be built and gated properly",
                fix="add a recipe for it to the wheel pipeline (wheels/matrix.toml), or pin a version that has wheels",
            )
        dest = built / wheel.name
        atomic_copy(wheel, dest)
    log.info(f"built {dest.name} ({log.fmt_bytes(dest.stat().st_size)})")
    return dest


def build_all(
    sdists: list[Sdist], built: Path, cache_dir: Path, fixes: Mapping[str, SdistFix], python: str
) -> list[Path]:
    built.mkdir(parents=True, exist_ok=True)
    return [build(s, built, cache_dir, fixes.get(str(canonicalize_name(s.name))), python) for s in sdists]
