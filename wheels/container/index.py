"""A local wheel index for the container: every wheel a build and its test need, downloaded once on the host.

Inside the container nothing is downloaded. Its installs (torch and the build tools into the build interpreter,
torch and the wheel into cibuildwheel's test environment) read this folder, bind-mounted read-only, as uv's only
source (``--no-index --find-links``), under constraints.txt. So the build is hermetic (the container runs with
``--network=none``) and repeatable, and it works where the container could not reach an index anyway.

The wheels are chosen for the builder's platform (manylinux_2_28 x86_64, so they install on the real base and on
any newer stand-in) and the target's Python, with pip's own resolver (`pip download`, pinned in constraints.txt).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from .. import log
from ..envs import CONSTRAINTS, TorchInfo, fresh_env
from ..errors import EnvError
from ..options import TorchBuild
from ..util import atomic_write_json, canonical_json, file_lock, run, sha256_text

PYPI = "https://pypi.org/simple"
# The oldest glibc the builder's base may have (manylinux_2_28); a wheel needing more would not install there.
GLIBC_CEILING = (2, 28)
ARCH = "x86_64"


def manylinux_platforms(glibc: tuple[int, int] = GLIBC_CEILING, arch: str = ARCH) -> list[str]:
    """Every platform tag a manylinux_{glibc} system accepts, newest first, legacy aliases included (for pip's
    repeated ``--platform``: pip does not expand a manylinux_X_Y tag to the older ones by itself)."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]
    return tags


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    torch: TorchBuild
    requirements: tuple[str, ...]
    python: str  # "3.11"
    constraints: str  # the text of constraints.txt

    @property
    def key(self) -> str:
        return sha256_text(
            canonical_json(
                {"torch": dataclasses.asdict(self.torch), "requirements": sorted(self.requirements),
                 "python": self.python, "constraints": self.constraints, "platforms": manylinux_platforms()}
            )
        )[:16]


def download_command(python: Path, spec: IndexSpec, dest: Path) -> list[str]:
    py = spec.python.replace(".", "")
    cmd = [
        str(python), "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(dest),
        "--only-binary=:all:", "--python-version", spec.python, "--implementation", "cp",
        "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none",
    ]  # fmt: skip
    for platform in manylinux_platforms():
        cmd += ["--platform", platform]
    cmd += ["--constraint", str(CONSTRAINTS)]
    index = spec.torch.index_url or PYPI
    cmd += ["--index-url", index]
    if index.rstrip("/") != PYPI:
        cmd += ["--extra-index-url", PYPI]  # torch's own index lacks most build tools
    cmd += [spec.torch.requirement, *spec.requirements]
    return cmd


def ensure_index(cache_dir: Path, spec: IndexSpec, system_python: str) -> Path:
    """The folder of wheels for ``spec`` (downloaded when absent or incomplete)."""
    if spec.torch.source != "index":
        raise EnvError(
            f'The container backend installs torch from its index; torch build "{spec.torch.name}" is the system torch',
            fix="build targets that use the system torch with the local backend",
        )
    root = cache_dir / "container" / "index"
    folder = root / f"{spec.torch.name}-cp{spec.python.replace('.', '')}-{spec.key}"
    marker = folder / ".complete.json"
    with file_lock(root / f".{folder.name}.lock", f"the container wheel index {folder.name}"):
        if marker.exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        with (
            log.step(f"Downloading the container's wheels ({spec.torch.requirement} + build tools) into {folder}"),
            tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp,
            fresh_env(sys.executable, system_python, prefix="pip-", parent=Path(tmp)) as env,
        ):
            env.install(["pip"], what="pip")
            staged = Path(tmp) / "wheels"
            run(
                download_command(env.python, spec, staged),
                error=EnvError,
                what="Downloading wheels for the container",
                fix="check that the torch index and PyPI are reachable from this host",
            )
            wheels = sorted(p.name for p in staged.glob("*.whl"))
            atomic_write_json(staged / ".complete.json", {"key": spec.key, "wheels": wheels})
            staged.rename(folder)
        log.info(f"container wheel index: {len(wheels)} wheels, {_size(folder) / 2**30:.1f} GiB")
    return folder


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.whl"))


def requirements_for(recipe_requirements: Sequence[str]) -> tuple[str, ...]:
    """The build tools plus what the in-container checks import (packaging for the wheel's metadata; pyelftools
    for the gate's ELF analysis)."""
    return tuple(dict.fromkeys([*recipe_requirements, "packaging", "pyelftools"]))


def torch_in_index(folder: Path) -> TorchInfo:
    """What the index's torch wheel says about itself (torch/version.py, TorchConfig.cmake's ABI flag), read from
    the archive without installing it. Only a forecast, for build settings that need the label before the build
    (flash-attn's FLASH_ATTN_LOCAL_VERSION): the label written into the wheel comes from the installed torch."""
    found = sorted(folder.glob("torch-*.whl"))
    if len(found) != 1:
        raise EnvError(f"expected one torch wheel in {folder}, found {[p.name for p in found] or 'none'}",
                       fix=f"delete {folder} so it is downloaded again")
    wheel = found[0]
    with zipfile.ZipFile(wheel) as zf:
        version_py = zf.read("torch/version.py").decode()
        config = zf.read("torch/share/cmake/Torch/TorchConfig.cmake").decode()
    version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", version_py, re.M)
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*(?:['\"]([^'\"]+)['\"]|None)", version_py, re.M)
    abi = re.search(r"_GLIBCXX_USE_CXX11_ABI=([01])", config)
    if not (version and cuda and abi):
        raise EnvError(f"{wheel.name} does not say its version, CUDA and C++ ABI where torch 2.x wheels do")
    python_tag = wheel.name.split("-")[2]
    return TorchInfo(
        version=version.group(1),
        cuda=cuda.group(1),
        cxx11_abi=abi.group(1) == "1",
        lib=Path("torch/lib"),
        python=f"{python_tag[2]}.{python_tag[3:]}",
        python_tag=python_tag,
    )
