"""The wheelhouse's records: ``<wheelhouse>/manifest.json``, one record per target's current wheel.

A wheel counts as built only when its record exists, its file exists and the file's sha256 matches the record.
Writes are atomic and serialised by a lock: an interrupted build leaves no half wheel and no stale record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .util import atomic_copy, atomic_write_json, file_lock, sha256_file

SCHEMA = 1
MANIFEST = "manifest.json"
REPORTS = "reports"


@dataclasses.dataclass
class Record:
    target: str
    filename: str
    sha256: str
    size: int
    package: str
    version: str  # the full version, label included: "2.7.4.post1+cu124torch2.5"
    label: str
    torch: dict[str, Any]  # {"version": "2.5.1+cu124", "cuda": "12.4", "cxx11_abi": False, "build": "cu124"}
    cuda: str
    python_tag: str
    platform_tag: str
    cuda_archs: list[str]
    cxx11_abi: bool
    cache_key: str
    flavour: str | None
    toolchain: dict[str, str]
    build: dict[str, Any]  # seconds, peak_rss_bytes, max_process_rss_bytes, jobs, nvcc_threads, attempts, backend
    gate: dict[str, Any]  # verdict, report (path relative to the wheelhouse), checked_at
    created: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


class Wheelhouse:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST
        self.reports = root / REPORTS

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"schema": SCHEMA, "records": {}}
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{self.path} is not valid JSON ({e})",
                fix="restore it from a backup, or delete it and rebuild (every wheel will be rebuilt or re-gated)",
            ) from None
        if data.get("schema") != SCHEMA:
            raise ConfigError(f"{self.path} has schema {data.get('schema')!r}; this pipeline reads {SCHEMA}")
        return data

    def records(self) -> dict[str, Record]:
        return {name: Record.from_dict(rec) for name, rec in self._read()["records"].items()}

    def record(self, target: str) -> Record | None:
        return self.records().get(target)

    def wheel_path(self, record: Record) -> Path:
        return self.root / record.filename

    def state(self, target: str, key: str) -> tuple[str, Record | None]:
        """"built" (key matches, file intact), "stale" (older key), "damaged" (file missing/altered) or "missing"."""
        record = self.record(target)
        if record is None:
            return "missing", None
        wheel = self.wheel_path(record)
        if not wheel.exists() or wheel.stat().st_size != record.size:
            return "damaged", record
        if record.cache_key != key:
            return "stale", record
        return "built", record

    def verify(self, record: Record) -> bool:
        """Full check: the file's sha256 equals the record's."""
        wheel = self.wheel_path(record)
        return wheel.exists() and sha256_file(wheel) == record.sha256

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self.root / ".lock", f"the wheelhouse {self.root}"):
            yield

    def commit(self, record: Record, wheel: Path, report: dict[str, Any] | None = None) -> Path:
        """Move a gated wheel in and record it. Writing the record is the commit point: any failure before it puts
        back what was there (the old wheel's bytes too, since a rebuild usually keeps the file name); the superseded
        wheel of the same target is removed only after the record names the new one."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.locked():
            dest = self.root / record.filename
            undo = _Undo()
            try:
                undo.replace(dest, lambda: atomic_copy(wheel, dest))
                if sha256_file(dest) != record.sha256:
                    raise ConfigError(f"{dest} changed while being copied into the wheelhouse; nothing was recorded")
                if report is not None:
                    report_path = self.reports / f"{record.filename}.abi.json"
                    undo.replace(report_path, lambda: atomic_write_json(report_path, report))
                data = self._read()
                old = data["records"].get(record.target)
                data["records"][record.target] = record.to_dict()
                atomic_write_json(self.path, data)
            except BaseException:
                undo.restore()
                raise
            undo.discard()
            if old and old["filename"] != record.filename:
                still_used = any(r["filename"] == old["filename"] for r in data["records"].values())
                if not still_used:
                    (self.root / old["filename"]).unlink(missing_ok=True)
                    (self.reports / f"{old['filename']}.abi.json").unlink(missing_ok=True)
        return dest

    def update_gate(self, target: str, gate: dict[str, Any], report: dict[str, Any]) -> None:
        with self.locked():
            data = self._read()
            rec = data["records"].get(target)
            if rec is None:
                raise ConfigError(f"No record for target {target} in {self.path}")
            rec["gate"] = gate
            atomic_write_json(self.reports / f"{rec['filename']}.abi.json", report)
            atomic_write_json(self.path, data)

    def untracked(self) -> list[Path]:
        """Wheel files in the wheelhouse that no record names (left by hand, or by an interrupted old version)."""
        known = {r.filename for r in self.records().values()}
        return sorted(p for p in self.root.glob("*.whl") if p.name not in known)


class _Undo:
    """Files replaced during a commit, each restorable (old bytes, or absence) until the record is written."""

    def __init__(self) -> None:
        self._saved: list[tuple[Path, Path | None]] = []

    def replace(self, path: Path, write: Callable[[], None]) -> None:
        backup = None
        if path.exists():
            backup = path.with_name(f".{path.name}.previous")
            backup.unlink(missing_ok=True)
            try:
                os.link(path, backup)  # a second name for the old bytes; the write below gives path a new inode
            except OSError:
                shutil.copy2(path, backup)
        self._saved.append((path, backup))
        write()

    def restore(self) -> None:
        for path, backup in reversed(self._saved):
            if backup is None:
                path.unlink(missing_ok=True)
            elif path.exists() and os.path.samefile(backup, path):
                backup.unlink()  # the write never happened; rename() onto a hard link of itself would do nothing
            else:
                os.replace(backup, path)

    def discard(self) -> None:
        for _, backup in self._saved:
            if backup is not None:
                backup.unlink(missing_ok=True)
