"""What a build measured: a JSON record next to the wheelhouse, and a row in bench/results.md's image section."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wheels import log
from wheels.util import atomic_write_json, atomic_write_text, available_memory_bytes, cpu_count, file_lock

BEGIN = "<!-- image builds: written by `nox -s image`; newest last -->"
END = "<!-- end of image builds -->"
TABLE_HEAD = (
    "| date | tag | profile | torch | wheels from | image size | build | steps cached | smoke |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
KEEP_ROWS = 30


def now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def machine() -> dict[str, Any]:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": cpu_count(),
        "memory_bytes": total,
        "available_memory_bytes": available_memory_bytes(),
        "platform": platform.platform(),
    }


def layers(history: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """`docker history --human=false` rows, oldest first, as {created_by, size_bytes}."""
    rows = []
    for entry in reversed(history):
        try:
            size = int(entry.get("Size", "0"))
        except ValueError:
            size = 0
        rows.append({"created_by": entry.get("CreatedBy", "")[:300], "size_bytes": size})
    return rows


def smoke_summary(report: Mapping[str, Any] | None) -> str:
    if not report:
        return "not run"
    checks = report.get("checks", [])
    passed = sum(1 for c in checks if c.get("ok") is True)
    skipped = [c["name"] for c in checks if c.get("skipped")]
    text = f"{'passed' if report.get('ok') else 'FAILED'} {passed}/{len(checks)}"
    return text + (f" (skipped: {', '.join(skipped)})" if skipped else "")


def write(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_json(path, dict(record))
    log.info(f"recorded the build in {path}")


def _row(record: Mapping[str, Any]) -> str:
    build = record["build"]
    return (
        f"| {record['date'][:16].replace('T', ' ')} | `{record['tag']}` | {record['profile']} | {record['torch']} "
        f"| {record['wheels_from']} | {log.fmt_bytes(record['size_bytes'])} | {log.fmt_seconds(build['seconds'])} "
        f"| {build['cached_steps']}/{build['steps']} | {smoke_summary(record.get('smoke'))} |"
    )


def update_bench(path: Path, record: Mapping[str, Any]) -> None:
    """Append a row to the image section of the bench file (created when missing); other sections are kept as is."""
    # The lock file lives in the temporary folder, not next to a file that is committed.
    lock = (
        Path(tempfile.gettempdir())
        / f"image-bench-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.lock"
    )
    with file_lock(lock, str(path)):
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            body, tail = rest.split(END, 1)
            rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| date")]
        else:
            head = text.rstrip("\n") + "\n\n## Image builds (`nox -s image`)\n\n"
            tail = "\n"
            rows = []
        rows = [*rows, _row(record)][-KEEP_ROWS:]
        section = f"{BEGIN}\n{TABLE_HEAD}\n" + "\n".join(rows) + f"\n{END}"
        atomic_write_text(path, head + section + tail)
    log.info(f"added the build to {path}")


def load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
