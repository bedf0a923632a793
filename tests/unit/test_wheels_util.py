"""Shared helpers: atomic writes, verified downloads, source unpacking, process-tree memory."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from wheels import util
from wheels.errors import BuildError, SourceError
from wheels.sources import unpack
from wheels.util import TreeMemorySampler, atomic_copy, atomic_write_json, atomic_write_text, download, run


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "f.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_copy(target, tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == target.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["copy.json", "f.json"]


def test_a_failed_atomic_write_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(util.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    with pytest.raises(OSError, match="disk full"):
        atomic_copy(target, tmp_path / "g.txt")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_download_verifies_and_reuses(tmp_path: Path) -> None:
    src = tmp_path / "src.tar.gz"
    src.write_bytes(b"sdist bytes")
    sha = hashlib.sha256(b"sdist bytes").hexdigest()
    dest = tmp_path / "cache" / "src.tar.gz"
    assert download(src.as_uri(), dest, sha, what="x") == dest and dest.read_bytes() == b"sdist bytes"
    src.unlink()
    assert download(src.as_uri(), dest, sha, what="x") == dest  # verified copy in the cache: no fetch


def test_download_rejects_a_wrong_hash_and_keeps_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src.tar.gz"
    src.write_bytes(b"tampered")
    with pytest.raises(SourceError, match="has sha256 .* but its pin is 0000") as e:
        download(src.as_uri(), tmp_path / "cache" / "x.tar.gz", "0" * 64, what="the x sdist")
    assert e.value.why and "changed" in e.value.why
    assert list((tmp_path / "cache").iterdir()) == []


def test_run_raises_the_given_error_with_the_output_tail() -> None:
    with pytest.raises(BuildError, match="(?s)Compiling failed \\(exit 3\\).*line 29\n---") as e:
        run(
            [sys.executable, "-c", "import sys; [print('line', i) for i in range(30)]; sys.exit(3)"],
            error=BuildError,
            what="Compiling",
            fix="read the log",
        )
    assert "line 4\n" not in e.value.what and e.value.fix == "read the log"
    assert run(["true"]).returncode == 0


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_sdist_returns_the_project_root(tmp_path: Path) -> None:
    sdist = _tar(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/setup.py": b"", "pkg-1.0/src/x.cu": b"k"})
    root = unpack(sdist, tmp_path / "tree")
    assert root == tmp_path / "tree" / "pkg-1.0" and (root / "src" / "x.cu").read_bytes() == b"k"
    zipped = tmp_path / "pkg.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("setup.py", b"")
        zf.writestr("a/b.py", b"")
    assert unpack(zipped, tmp_path / "tree2") == tmp_path / "tree2"  # no single top folder: the tree itself


def test_unpack_refuses_paths_outside_the_tree(tmp_path: Path) -> None:
    evil = _tar(tmp_path / "evil.tar.gz", {"../escaped.txt": b"x"})
    with pytest.raises(tarfile.OutsideDestinationError):
        unpack(evil, tmp_path / "tree")
    assert not (tmp_path / "escaped.txt").exists()


def test_unpack_copies_a_folder_without_build_products(tmp_path: Path) -> None:
    src = tmp_path / "canary"
    for rel in ("setup.py", "csrc/a.cu", "build/temp/a.o", "canary.egg-info/PKG-INFO", "canary/__pycache__/x.pyc"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    root = unpack(src, tmp_path / "tree")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == ["csrc/a.cu", "setup.py"]
    with pytest.raises(SourceError, match="Don't know how to unpack"):
        unpack(tmp_path / "x.rar", tmp_path / "t3")


def test_tree_memory_sampler_sees_children(tmp_path: Path) -> None:
    child = "b = bytearray(150 * 2**20); import time; time.sleep(1.2)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    with TreeMemorySampler(proc.pid, interval=0.1) as memory:
        proc.wait()
    assert 150 * 2**20 < memory.peak_process <= memory.peak_tree


def test_tree_memory_sampler_on_a_process_already_gone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with TreeMemorySampler(proc.pid) as memory:
        pass
    assert (memory.peak_tree, memory.peak_process) == (0, 0)
