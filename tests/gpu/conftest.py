"""GPU tier: run by `nox -s gpu_test` in a fresh environment per wheel (or inside an image), never by `nox -s tests`.

Measurements go through the `measure` fixture into the JSON file named by GPU_TEST_REPORT, which the session merges
into bench/results.md and its JSON report. A test that needs a GPU fails (not skips) when none is present: the
session itself refuses to run without one unless told to skip, so a pass is never reported for work not done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def device() -> Any:
    # GPU_TESTS_DEVICE=cpu exists only to shake out API mistakes in these tests on a machine without a GPU (GPU-vs-CPU
    # comparisons then compare CPU with CPU); the gpu_test session never sets it, and no result is reported from it.
    if os.environ.get("GPU_TESTS_DEVICE") == "cpu":
        return torch.device("cpu")
    assert torch.cuda.is_available(), "no CUDA device visible to torch: gpu tests need one"
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="session")
def measurements() -> Any:
    rows: list[dict[str, Any]] = []
    yield rows
    path = os.environ.get("GPU_TEST_REPORT")
    if path:
        report = Path(path)
        existing = json.loads(report.read_text()) if report.exists() else []
        report.write_text(json.dumps(existing + rows, indent=2))


@pytest.fixture
def measure(measurements: list[dict[str, Any]], request: pytest.FixtureRequest):  # noqa: ANN201
    """measure(name, value, unit, **context): record a number from this test."""

    def record(name: str, value: float, unit: str, **context: Any) -> None:
        measurements.append({"test": request.node.nodeid, "name": name, "value": value, "unit": unit, **context})

    return record
