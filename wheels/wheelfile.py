"""Reading and rewriting wheel files: pure functions over zip archives, no environment handling."""

from __future__ import annotations

import base64
import csv
import email.parser
import hashlib
import io
import re
import zipfile
from email.message import Message
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def dist_info_dir(names: list[str]) -> str:
    dirs = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dirs) != 1:
        raise ValueError(f"expected one .dist-info folder, found {sorted(dirs) or 'none'}")
    return dirs.pop()


def read_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as zf:
        info = dist_info_dir(zf.namelist())
        return email.parser.BytesParser().parsebytes(zf.read(f"{info}/METADATA"))


def record_problems(wheel: Path) -> list[str]:
    """Files whose RECORD hash or size is wrong, files missing from RECORD, RECORD entries with no file."""
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        info = dist_info_dir(names)
        rows = list(csv.reader(io.StringIO(zf.read(f"{info}/RECORD").decode())))
        listed = {}
        for row in rows:
            if row:
                listed[row[0]] = row
        for name in names:
            row = listed.pop(name, None)
            if row is None:
                problems.append(f"{name} is in the archive but not in RECORD")
                continue
            if name == f"{info}/RECORD" or name.endswith((".jws", ".p7s")) and name.startswith(info):
                continue
            data = zf.read(name)
            if len(row) < 3 or row[1] != _record_hash(data):
                problems.append(f"{name}: hash does not match RECORD")
            elif row[2] and int(row[2]) != len(data):
                problems.append(f"{name}: size does not match RECORD")
        problems += [f"{name} is in RECORD but not in the archive" for name in listed]
    return problems


def rewrite(wheel: Path, out_dir: Path, *, version: str) -> Path:
    """Write a copy of ``wheel`` whose METADATA, .dist-info folder, RECORD and file name carry ``version``."""
    name, _, build, tags = parse_wheel_filename(wheel.name)
    Version(version)  # raises InvalidVersion on garbage
    dist = re.sub(r"[-_.]+", "_", str(canonicalize_name(name)))
    tag = wheel.name[: -len(".whl")].split("-")
    tag_str = "-".join(tag[-3:])
    new_info = f"{dist}-{version}.dist-info"
    out = out_dir / (f"{dist}-{version}" + (f"-{build[0]}{build[1]}" if build else "") + f"-{tag_str}.whl")
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[list[str]] = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        old_info = dist_info_dir(src.namelist())
        for item in src.infolist():
            if item.filename.endswith("/") or item.filename == f"{old_info}/RECORD":
                continue
            data = src.read(item.filename)
            target = item.filename
            if target.startswith(old_info + "/"):
                target = new_info + target[len(old_info) :]
                if target == f"{new_info}/METADATA":
                    data = _set_version(data, version)
            new_item = zipfile.ZipInfo(target, date_time=item.date_time)
            new_item.external_attr = item.external_attr
            new_item.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(new_item, data)
            records.append([target, _record_hash(data), str(len(data))])
        records.append([f"{new_info}/RECORD", "", ""])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(records)
        rec = zipfile.ZipInfo(f"{new_info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0))
        rec.external_attr = 0o644 << 16
        dst.writestr(rec, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return out


def _set_version(metadata: bytes, version: str) -> bytes:
    text = metadata.decode("utf-8")
    new, count = re.subn(r"^Version: .*$", f"Version: {version}", text, count=1, flags=re.M)
    if count != 1:
        raise ValueError("METADATA has no Version field")
    return new.encode("utf-8")


def extension_members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return [n for n in zf.namelist() if re.search(r"\.so(\.\d+)*$", n)]
