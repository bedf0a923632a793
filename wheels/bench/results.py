"""Benchmark results: what one suite run measured, and how it is appended to bench/results.md and results.json.

Pure data and formatting, apart from the append (atomic, under a lock), so suites stay small and later suites
(mmcv, flash-attn, gpu) write the same table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import log
from ..options import REPO_ROOT, Options
from ..util import atomic_write_json, atomic_write_text, cpu_count

SCHEMA = 1
MARKDOWN_HEADER = """\
# Benchmark results

Appended by `nox -s bench` (`python -m wheels bench [SUITE ...]`), newest last; every number is a measurement of one
run on the machine named in its row. The same runs, with more detail, are in `results.json`.
Columns: wall time of the whole step; peak RSS of the step's process tree (sampled every 0.2 s); compile jobs the
pipeline planned; the wheel's size and sha256; compiler-cache hits / compile units of that step.
"""
COLUMNS = ("date", "machine", "step", "target", "wall", "peak RSS", "jobs", "wheel size", "sha256", "compiler cache")


@dataclasses.dataclass
class Measurement:
    step: str
    target: str
    command: str
    wall_seconds: float
    peak_rss_bytes: int | None = None
    jobs: int | None = None
    wheel_size: int | None = None
    sha256: str | None = None
    cache: dict[str, Any] | None = None  # {"hits", "misses", "hit_rate"} of this step's compiles
    built: bool | None = None  # did the step build a wheel (False for a no-op)
    notes: str = ""


@dataclasses.dataclass
class Check:
    """A target the suite checks: recorded as met or missed."""

    name: str
    limit_seconds: float
    value: float

    @property
    def met(self) -> bool:
        return self.value < self.limit_seconds


@dataclasses.dataclass
class SuiteResult:
    measurements: list[Measurement]
    checks: list[Check] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Context:
    suite: str
    options: Options
    env: Mapping[str, str]
    machine: dict[str, Any]


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        # Other work on the machine slows every step; the load at the start says how shared it was.
        "load_average": list(os.getloadavg()),
    }


def git_commit(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    return {
        "sha": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def new_run(ctx: Context, result: SuiteResult, now: datetime.datetime | None = None) -> dict[str, Any]:
    """The run as it is stored; ``now`` is when the suite started."""
    now = now or datetime.datetime.now(datetime.UTC)
    return {
        "suite": ctx.suite,
        "date": now.isoformat(timespec="seconds"),
        "machine": ctx.machine,
        "commit": git_commit(),
        "measurements": [dataclasses.asdict(m) for m in result.measurements],
        "checks": [{**dataclasses.asdict(c), "met": c.met} for c in result.checks],
        "notes": result.notes,
    }


def _seconds(s: float) -> str:
    return log.fmt_seconds(s)


def _size(n: int | None) -> str:
    return "-" if n is None else (f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB")


def _rss(n: int | None) -> str:
    return "-" if n is None else log.fmt_bytes(n)


def _cache(cache: dict[str, Any] | None) -> str:
    if not cache:
        return "-"
    units = cache["hits"] + cache["misses"]
    return f"{cache['hits']}/{units} hits ({cache['hit_rate']:.0%})" if units else "no compiles"


def render_markdown(run: dict[str, Any]) -> str:
    """One run: a heading, its table, its checks and notes."""
    m = run["machine"]
    date = run["date"][:16].replace("T", " ") + " UTC"
    machine = f"{m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB"
    commit = run["commit"]
    sha = (commit.get("sha") or "unknown")[:10] + (" (with uncommitted changes)" if commit.get("dirty") else "")
    lines = [
        f"## {run['suite']}: {date}",
        "",
        f"Machine: {machine}, {m['cpu'] or 'unknown CPU'}, Linux {m['kernel']}, Python {m['python']}; "
        f"load average at start {m['load_average'][0]:.2f}. Commit {sha}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in run["measurements"]:
        cells = [
            date,
            machine,
            r["step"],
            r["target"],
            _seconds(r["wall_seconds"]),
            _rss(r["peak_rss_bytes"]),
            "-" if r["jobs"] is None else str(r["jobs"]),
            _size(r["wheel_size"]),
            f"`{r['sha256'][:12]}`" if r["sha256"] else "-",
            _cache(r["cache"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for c in run["checks"]:
        lines.append(f"- Target: {c['name']}: **{'met' if c['met'] else 'MISSED'}** ({_seconds(c['value'])}).")
    for r in run["measurements"]:
        if r["notes"]:
            lines.append(f"- {r['step']}: {r['notes']}")
    lines += [f"- {note}" for note in run["notes"]]
    lines.append(f"- Commands: {'; '.join(sorted({r['command'] for r in run['measurements']}))}.")
    return "\n".join(lines).rstrip() + "\n"


def append_run(run: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    """Add the run to results.md and results.json; each file is replaced atomically, both under one lock."""
    md, js = results_dir / "results.md", results_dir / "results.json"
    results_dir.mkdir(parents=True, exist_ok=True)
    with _locked_dir(results_dir):
        data = json.loads(js.read_text()) if js.exists() else {"schema": SCHEMA, "runs": []}
        data["runs"].append(run)
        text = md.read_text() if md.exists() else MARKDOWN_HEADER
        atomic_write_text(md, text.rstrip("\n") + "\n\n" + render_markdown(run))
        atomic_write_json(js, data)
    return md, js


@contextlib.contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself: both files in it are replaced (new inodes) on every append, and a
    lock file beside them would be one more untracked file in the repository."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
