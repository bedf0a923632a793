"""Relabelling a wheel: METADATA version, .dist-info folder, RECORD hashes and file name move together."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest
from packaging.version import InvalidVersion
from spine_fakes import make_wheel

from wheels.wheelfile import dist_info_dir, extension_members, read_metadata, record_problems, rewrite


def _rewrite(tmp_path: Path, **kw: str) -> tuple[Path, Path]:
    src = make_wheel(tmp_path / "in", **kw)
    return src, rewrite(src, tmp_path / "out", version=f"{kw.get('version', '0.1.0')}+cu124torch2.5")


def test_rewrite_moves_version_dist_info_record_and_name(tmp_path: Path) -> None:
    src, out = _rewrite(tmp_path)
    assert out.name == "canary-0.1.0+cu124torch2.5-cp311-cp311-linux_x86_64.whl"
    assert out.parent == tmp_path / "out" and src.exists()  # a copy: the input is left alone
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert dist_info_dir(names) == "canary-0.1.0+cu124torch2.5.dist-info"
        assert not any(n.startswith("canary-0.1.0.dist-info") for n in names)
        assert zf.read("canary/_C.so") == b"\x7fELF not really\n"
        rows = list(csv.reader(io.StringIO(zf.read("canary-0.1.0+cu124torch2.5.dist-info/RECORD").decode())))
    assert {r[0] for r in rows} == set(names)
    meta = read_metadata(out)
    assert meta["Version"] == "0.1.0+cu124torch2.5"
    assert meta["Metadata-Version"] == "2.1" and meta["Name"] == "canary"  # only the Version line changed
    assert meta.get_payload() == "A description.\n"
    assert record_problems(out) == []


def test_rewrite_keeps_file_modes_and_dates(tmp_path: Path) -> None:
    src = tmp_path / "in" / "canary-0.1.0-cp311-cp311-linux_x86_64.whl"
    make_wheel(tmp_path / "in")
    with zipfile.ZipFile(src) as zf:
        infos = {i.filename: (i.date_time, i.external_attr) for i in zf.infolist()}
    out = rewrite(src, tmp_path / "out", version="0.1.0+x")
    with zipfile.ZipFile(out) as zf:
        assert (zf.getinfo("canary/_C.so").date_time, zf.getinfo("canary/_C.so").external_attr) == infos["canary/_C.so"]


def test_rewrite_normalises_the_distribution_name(tmp_path: Path) -> None:
    src, out = _rewrite(tmp_path, name="flash_attn", version="2.7.4.post1")
    assert out.name == "flash_attn-2.7.4.post1+cu124torch2.5-cp311-cp311-linux_x86_64.whl"
    assert read_metadata(out)["Version"] == "2.7.4.post1+cu124torch2.5"


def test_rewrite_rejects_an_invalid_version(tmp_path: Path) -> None:
    src = make_wheel(tmp_path / "in")
    with pytest.raises(InvalidVersion):
        rewrite(src, tmp_path / "out", version="0.1.0+cu124 torch")


def test_record_problems_finds_every_kind_of_damage(tmp_path: Path) -> None:
    good = make_wheel(tmp_path / "in")
    assert record_problems(good) == []
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "canary/_C.so":
                data = b"tampered"
            if item.filename == "canary/__init__.py":
                continue  # listed in RECORD, gone from the archive
            dst.writestr(item, data)
        dst.writestr("canary/extra.py", b"not in RECORD")
    problems = record_problems(bad)
    assert sorted(problems) == sorted(
        [
            "canary/_C.so: hash does not match RECORD",
            "canary/extra.py is in the archive but not in RECORD",
            "canary/__init__.py is in RECORD but not in the archive",
        ]
    )


def test_record_problems_size_mismatch(tmp_path: Path) -> None:
    good = make_wheel(tmp_path / "in")
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("RECORD"):
                data = data.replace(b"__init__.py,sha256=", b"__init__.py,sha256=").replace(b",6\n", b",7\n")
            dst.writestr(item, data)
    assert record_problems(bad) == ["canary/__init__.py: size does not match RECORD"]


def test_a_wheel_needs_exactly_one_dist_info() -> None:
    with pytest.raises(ValueError, match="expected one .dist-info folder, found none"):
        dist_info_dir(["a/b.py"])
    with pytest.raises(ValueError, match="found \\['a-1.dist-info', 'b-1.dist-info'\\]"):
        dist_info_dir(["a-1.dist-info/METADATA", "b-1.dist-info/METADATA"])


def test_extension_members(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path,
        files={
            "p/_C.cpython-311-x86_64-linux-gnu.so": b"",
            "p.libs/libx.so.1.2": b"",
            "p/__init__.py": b"",
            "p/so_what.py": b"",
        },
        name="p",
    )
    assert sorted(extension_members(wheel)) == ["p.libs/libx.so.1.2", "p/_C.cpython-311-x86_64-linux-gnu.so"]
