"""Helpers shared by the integration tests: a clean environment for the pipeline and a way to run its CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from wheels.options import without_settings

REPO = Path(__file__).resolve().parents[2]
CANARY_TARGET = "canary-cu124"


def pipeline_env(**extra: str) -> dict[str, str]:
    """This process's environment without the pipeline's own settings, so a developer's MAX_JOBS, CUDA_HOME,
    WHEELHOUSE or TORCH_INDEX_URL_* cannot leak into a test (CUDA_HOME out: the test proves provisioning)."""
    return {**without_settings(os.environ), **extra}


def run_wheels(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 3600
) -> subprocess.CompletedProcess:
    """`python -m wheels ARGS` from the repository root, as `nox -s wheels` runs it (default env: pipeline_env())."""
    return subprocess.run(
        [sys.executable, "-m", "wheels", *map(str, args)],
        cwd=REPO,
        env=env if env is not None else pipeline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclasses.dataclass(frozen=True)
class Build:
    wheelhouse: Path
    cache: Path
    wheel: Path
    record: dict
    seconds: float  # wall time of the whole command
    output: str  # its stderr (the pipeline logs there)
