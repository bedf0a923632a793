"""Expensive fixtures shared by the integration tests, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def canary_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A wheelhouse holding the gated canary-cu124 wheel, built once through the real pipeline.

    It shares the repository's cache (WHEELS_CACHE_DIR, default .cache/wheels: toolkit, environments, compiler
    cache), so a warm machine builds it in about 25 s, a cold one in about 75 s.
    """
    house = tmp_path_factory.mktemp("canary-wheelhouse")
    cache = Path(os.environ.get("WHEELS_CACHE_DIR") or REPO / ".cache" / "wheels")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wheels",
            "build",
            "canary-cu124",
            "--wheelhouse",
            str(house),
            "--cache-dir",
            str(cache),
        ],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if result.returncode != 0:
        pytest.fail(f"building the canary failed (exit {result.returncode}):\n{result.stdout[-4000:]}")
    yield house
