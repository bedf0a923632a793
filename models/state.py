"""The verified-state record kept next to every downloaded file.

Re-hashing 16 GB on every container start would take minutes; instead each verified file gets a small sidecar,
``.<filename>.verified.json``, holding its sha256 and the size and mtime it had when verified. A later run trusts the
file without reading it as long as size and mtime are unchanged and the record still describes the manifest entry.
A dotfile with a .json suffix: ComfyUI's model lists filter by extension and never show it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_json
from .manifest import ModelFile

SCHEMA = 1


def record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified.json")


@dataclasses.dataclass(frozen=True)
class Record:
    sha256: str
    size: int
    mtime_ns: int
    origin: str  # repo@revision:path or the url, as in the manifest when verified
    commit: str | None  # the hub commit the bytes came from (X-Repo-Commit), when known
    verified_against: str  # "manifest sha256", "hub LFS sha256", "hub git sha1", "sha256-prefix", "adopted"
    verified_at: str

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}


def read(target: Path) -> Record | None:
    try:
        data = json.loads(record_path(target).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    try:
        return Record(**{f.name: data[f.name] for f in dataclasses.fields(Record)})
    except (KeyError, TypeError):
        return None


def check(target: Path, entry: ModelFile) -> tuple[bool, str]:
    """Whether ``target`` is present and verified, judged from its record and ``stat`` alone (no reading).

    Returns (valid, reason); the reason says why a present file must be checked again.
    """
    try:
        st = target.stat()
    except FileNotFoundError:
        return False, "missing"
    record = read(target)
    if record is None:
        return False, "present, no verified-state record"
    if record.size != st.st_size:
        return False, f"size changed since verified ({record.size} -> {st.st_size} bytes)"
    if record.mtime_ns != st.st_mtime_ns:
        return False, "modified since verified (mtime changed)"
    if record.origin != entry.origin:
        return False, f"manifest entry changed (was {record.origin})"
    if entry.sha256 is not None and record.sha256 != entry.sha256:
        return False, "manifest sha256 differs from the verified one"
    if entry.size is not None and record.size != entry.size:
        return False, "manifest size differs from the verified one"
    return True, "verified"


def write(target: Path, entry: ModelFile, sha256: str, commit: str | None, against: str) -> Record:
    st = target.stat()
    record = Record(
        sha256=sha256,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        origin=entry.origin,
        commit=commit,
        verified_against=against,
        verified_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    atomic_write_json(record_path(target), record.to_json())
    return record


def remove(target: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(target))
