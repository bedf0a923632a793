"""cibuildwheel's configuration for one target: pure functions from the pipeline's settings to CIBW_* variables.

What is the same for every target lives in ``[tool.cibuildwheel]`` of the repository's pyproject.toml (cibuildwheel
reads it through ``--config-file``): the build frontend, the architecture, the hooks. What differs per target (the
builder image, the bind mounts, the compile environment, the repair command with the never-graft list) is passed
as CIBW_* environment variables, which cibuildwheel ranks above its config file.

Paths inside the container:
    /project           cibuildwheel's copy of the build folder: src/<project> and support/ (the wheels package)
    /wheels            the local wheel index (read-only): every install in the container comes from here
    /ccache            the compiler cache (the same folder the local backend uses), kept across builds
    /uv-cache          uv's cache, kept across builds (torch is unpacked once, not per build)
    /cibw-meta         what the container reports back: build-info.json, gate.json, ccache-stats.log
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

PROJECT = "/project"
SUPPORT = f"{PROJECT}/support"
WHEELS = "/wheels"
CCACHE = "/ccache"
UV_CACHE = "/uv-cache"
META = "/cibw-meta"
CCACHE_BIN = "/usr/local/bin/ccache"
CCACHE_MASQUERADE = "/usr/local/lib/ccache"
EXPECT = f"{SUPPORT}/expect.json"
UV_CONFIG = f"{SUPPORT}/uv.toml"
BUILD_INFO = f"{META}/build-info.json"  # written by before-build (pyproject.toml)
UV_TEST_CONFIG = f"{SUPPORT}/uv-test.toml"
BUILD_REQUIREMENTS = f"{SUPPORT}/build-requirements.txt"
# The in-container steps run the same code as the host, from the copy of the wheels package in support/.
INCONTAINER = f"PYTHONPATH={SUPPORT} python -m wheels.container.incontainer"


@dataclasses.dataclass(frozen=True)
class Mounts:
    """Host folders bound into the container."""

    wheels: Path  # the local wheel index (read-only)
    ccache: Path
    uv_cache: Path
    meta: Path

    def create_args(self) -> list[str]:
        return [
            f"--volume={self.wheels}:{WHEELS}:ro",
            f"--volume={self.ccache}:{CCACHE}",
            f"--volume={self.uv_cache}:{UV_CACHE}",
            f"--volume={self.meta}:{META}",
        ]


def build_identifier(python: str) -> str:
    """cibuildwheel's identifier for a CPython build on manylinux x86_64: "3.11" -> "cp311-manylinux_x86_64"."""
    return f"cp{python.replace('.', '')}-manylinux_x86_64"


def container_engine(mounts: Mounts) -> str:
    """docker, with no network at all (every input is on the host side of a bind mount) and the mounts above.

    cibuildwheel also binds the host's / at /host (its default); nothing here relies on it."""
    args = ["--network=none", *mounts.create_args()]
    return "docker; create_args: " + " ".join(shlex.quote(a) for a in args)


def compile_environment(
    *, cuda: str, arch_list: str, jobs: Mapping[str, str], recipe_env: Mapping[str, str], epoch: str,
    ccache_maxsize: str,
) -> dict[str, str]:
    """The build's environment inside the container: what the local backend sets, with container paths."""
    cuda_home = f"/usr/local/cuda-{cuda}"
    env = {
        "SOURCE_DATE_EPOCH": epoch,
        "TORCH_CUDA_ARCH_LIST": arch_list,
        "FORCE_CUDA": "1",
        "CUDA_HOME": cuda_home,
        **jobs,
        **recipe_env,
        # The compiler cache, as the local backend sets it: host code through ccache's masquerade, device code
        # through PYTORCH_NVCC. Paths are relative to /project, so the same source hits wherever it was copied.
        "CXX": f"{CCACHE_MASQUERADE}/c++",
        "PYTORCH_NVCC": f"{CCACHE_BIN} {cuda_home}/bin/nvcc",
        "CCACHE_DIR": CCACHE,
        "CCACHE_BASEDIR": PROJECT,
        "CCACHE_NOHASHDIR": "1",
        "CCACHE_COMPILERCHECK": "content",
        "CCACHE_MAXSIZE": ccache_maxsize,
        "CCACHE_STATSLOG": f"{META}/ccache-stats.log",
        # Every install reads the local index only (uv.toml: no-index, find-links), under the one pin set.
        "UV_CONFIG_FILE": UV_CONFIG,
        "UV_CONSTRAINT": f"{SUPPORT}/constraints.txt",
        "UV_CACHE_DIR": UV_CACHE,
        # The build interpreter's packages stay in the cache (a bind mount, so hard links are impossible) and are
        # linked in: torch and its CUDA wheels are 5 GB the container would otherwise copy for every build. The
        # test environment copies instead (pyproject.toml): the gate resolves files to their real paths, and its
        # model of torch's RPATHs needs them laid out as a normal install.
        "UV_LINK_MODE": "symlink",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": WHEELS,
    }
    return env


def uv_config(*, no_deps: bool = False) -> str:
    """uv's settings in the container (uv 0.13 has no environment variable for --no-index): the local index only.
    The test step adds no-deps: the wheel and the checks' own needs go in without dependencies, as in the gate."""
    text = f'[pip]\nno-index = true\nfind-links = ["{WHEELS}"]\n'
    return text + ("no-deps = true\n" if no_deps else "")


def environment_string(env: Mapping[str, str]) -> str:
    """CIBW_ENVIRONMENT's form: space-separated assignments, each value quoted (cibuildwheel parses it like bash)."""
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())


def repair_command(never_graft: Sequence[str]) -> str:
    """Relabel (from the build interpreter's torch), then auditwheel repair without grafting torch's or CUDA's
    libraries. auditwheel picks the platform tag from the symbols the wheel needs (AUDITWHEEL_PLAT on manylinux
    images names the image's own policy, which it then enforces)."""
    excludes = " ".join(f"--exclude {shlex.quote(p)}" for p in never_graft)
    return (
        f"rm -rf /tmp/labelled && {INCONTAINER} relabel --expect {EXPECT} --build-info {BUILD_INFO} "
        "--out /tmp/labelled {wheel} && "
        f"python -m auditwheel repair {excludes} --wheel-dir {{dest_dir}} /tmp/labelled/*.whl"
    )


def cibw_environment(
    *,
    image: str,
    python: str,
    mounts: Mounts,
    compile_env: Mapping[str, str],
    never_graft: Sequence[str],
) -> dict[str, str]:
    """The per-target CIBW_* variables (the static part is [tool.cibuildwheel] in pyproject.toml)."""
    return {
        "CIBW_PLATFORM": "linux",
        "CIBW_BUILD": build_identifier(python),
        "CIBW_ARCHS_LINUX": "x86_64",
        # A local tag: cibuildwheel inspects it and, when it is present for linux/amd64, runs it with --pull=never.
        "CIBW_MANYLINUX_X86_64_IMAGE": image,
        "CIBW_CONTAINER_ENGINE": container_engine(mounts),
        "CIBW_ENVIRONMENT_LINUX": environment_string(compile_env),
        "CIBW_REPAIR_WHEEL_COMMAND_LINUX": repair_command(never_graft),
    }
