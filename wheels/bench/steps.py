"""One measured step of a suite: a whole `nox -s wheels` command, timed, its output logged, and what it recorded."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import log
from ..errors import BuildError
from ..options import REPO_ROOT, without_settings
from ..util import TreeMemorySampler


def wheelhouse_record(wheelhouse: Path, target: str) -> dict[str, Any] | None:
    try:
        return json.loads((wheelhouse / "manifest.json").read_text())["records"].get(target)
    except FileNotFoundError:
        return None


@dataclasses.dataclass(frozen=True)
class StepRun:
    wall_seconds: float
    peak_rss_bytes: int | None  # None when not sampled
    output: str
    record: dict[str, Any]  # the target's record after the step
    built: bool  # False when the step left the record as it was (a no-op)

    @property
    def stats(self) -> dict[str, Any]:
        """The record's build statistics when this step built; empty for a no-op."""
        return self.record["build"] if self.built else {}


def run_step(
    suite: str,
    step: str,
    target: str,
    cmd: list[str],
    env: dict[str, str],
    wheelhouse: Path,
    logs: Path,
    *,
    sample_memory: bool,
) -> StepRun:
    """Run ``cmd`` from the repository root, its output into a numbered log in ``logs``; a failure is a BuildError
    with the log's tail. ``sample_memory``: the peak RSS of the command's process tree (meaningless when the work
    runs in a container, outside that tree)."""
    before = wheelhouse_record(wheelhouse, target)
    log_path = logs / f"{len(list(logs.iterdir())) + 1}-{re.sub(r'[^A-Za-z0-9]+', '-', step).strip('-')}.log"
    peak: int | None = None
    with log.step(f"bench {suite}: {step}"), log_path.open("w") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        if sample_memory:
            with TreeMemorySampler(proc.pid, interval=0.2) as memory:
                rc = proc.wait()
            peak = memory.peak_tree
        else:
            rc = proc.wait()
        wall = time.monotonic() - started
    output = log_path.read_text(errors="replace")
    if rc != 0:
        raise BuildError(
            f"bench {suite}: `{' '.join(cmd)}` failed (exit {rc}) in step {step!r}",
            why="\n".join(output.splitlines()[-30:]),
            fix=f"read {log_path}",
        )
    record = wheelhouse_record(wheelhouse, target)
    assert record is not None
    built = before is None or record["created"] != before["created"] or record["cache_key"] != before["cache_key"]
    return StepRun(round(wall, 2), peak, output, record, built)


def step_env(env: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without the pipeline's settings and without nox's own session markers: each step is
    a fresh `nox -s wheels` command, configured only by what the suite sets."""
    return {k: v for k, v in without_settings(env).items() if k not in ("VIRTUAL_ENV", "NOX_CURRENT_SESSION")}


@dataclasses.dataclass(frozen=True)
class Workspace:
    """A suite's private cache, wheelhouse and logs under ``work``. The one-time setup named in ``shared`` (toolkit,
    environments, ...) is linked from the pipeline's own cache; ``missing`` lists what that cache lacked before."""

    cache: Path
    wheelhouse: Path
    logs: Path
    missing: tuple[str, ...]

    @classmethod
    def make(cls, work: Path, shared_root: Path, shared: Sequence[str]) -> Workspace:
        missing = tuple(s for s in shared if not ((shared_root / s).is_dir() and any((shared_root / s).iterdir())))
        cache, wheelhouse, logs = work / "cache", work / "wheelhouse", work / "logs"
        cache.mkdir()
        logs.mkdir()
        for sub in shared:
            (shared_root / sub).mkdir(parents=True, exist_ok=True)
            (cache / sub).symlink_to((shared_root / sub).resolve())
        return cls(cache, wheelhouse, logs, missing)
