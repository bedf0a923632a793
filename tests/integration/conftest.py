"""Session fixtures for integration tests: one cache (toolkit, downloads, environments) and one canary build per run.

The expensive things (provisioning the CUDA 12.4 toolkit, creating the build environment, compiling the canary) happen
once per session; every test that needs a real wheel shares the result. Everything lives under a temporary folder that
is removed at the end (the build environment alone is about 5 GB). Set TEST_WHEELS_CACHE to a folder to keep the
toolkit and the downloads between sessions (a developer's loop; CI leaves it unset and starts cold).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from canary_helpers import CANARY_TARGET, Build, pipeline_env, run_wheels


@pytest.fixture(scope="session")
def wheels_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("wheels-cache")
    shared = os.environ.get("TEST_WHEELS_CACHE")
    if shared:
        for sub in ("toolkits", "downloads"):
            (Path(shared) / sub).mkdir(parents=True, exist_ok=True)
            (cache / sub).symlink_to(Path(shared).resolve() / sub)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)  # rmtree unlinks the shared links, never what they point to


@pytest.fixture(scope="session")
def canary_build(wheels_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """`python -m wheels build canary-cu124` into a fresh wheelhouse with an empty compiler cache: a real build."""
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    started = time.monotonic()
    result = run_wheels(
        "build", CANARY_TARGET, "--wheelhouse", wheelhouse, "--cache-dir", wheels_cache, env=pipeline_env()
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(f"building {CANARY_TARGET} failed (exit {result.returncode}):\n{result.stderr[-8000:]}")
    record = json.loads((wheelhouse / "manifest.json").read_text())["records"][CANARY_TARGET]
    return Build(wheelhouse, wheels_cache, wheelhouse / record["filename"], record, seconds, result.stderr)


@pytest.fixture(scope="session")
def canary_wheelhouse(canary_build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheelhouse holding the gated canary-cu124 wheel and its record: a copy of the session's one real build,
    so a test may publish from it, tamper with it or rewrite its records without touching the others'."""
    house = tmp_path_factory.mktemp("canary-wheelhouse")
    shutil.copytree(canary_build.wheelhouse, house, dirs_exist_ok=True)
    return house
