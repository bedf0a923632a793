"""Fakes for the unit tier: a small matrix, fake programs and CUDA toolkits, synthetic wheels."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import stat
import textwrap
import zipfile
from pathlib import Path

from wheels.manifest import Record

MATRIX = """\
schema = 1

[settings]
wheelhouse = "wh-from-matrix"
cache-dir = "cache-from-matrix"

[torch.cu121]
version = "2.5.1"
cuda = "12.1"
index-url = "https://download.pytorch.org/whl/cu121"

[torch.cu124]
version = "2.5.1"
cuda = "12.4"
index-url = "https://pypi.org/simple"

[torch.system]
source = "system"

[targets.canary]
package = "canary"
version = "0.1.0"
recipe = "canary"
source = { path = "wheels/canary" }
torch = "cu121"
python = "3.11"
cuda-archs = "8.0;9.0"
default = true

[targets.canary-cu124]
extends = "canary"
torch = "cu124"

[targets.fa]
package = "flash-attn"
version = "2.7.4.post1"
recipe = "flash-attn"
flavour = "full"
source = { sdist = "https://example.invalid/flash_attn-2.7.4.post1.tar.gz", sha256 = "%s" }
torch = "cu121"
python = "3.11"
cuda-archs = "8.0;9.0"
default = true

[targets.fa-hdim128-cu124]
extends = "fa"
flavour = "hdim128"
torch = "cu124"
""" % ("ab" * 32)


def write_program(path: Path, script: str) -> Path:
    """An executable shell script at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_cuda_home(root: Path, nvcc_full: str) -> Path:
    """A folder whose bin/nvcc answers --version like NVIDIA's nvcc of that release (and nothing else)."""
    major_minor = ".".join(nvcc_full.split(".")[:2])
    write_program(
        root / "bin" / "nvcc",
        f"""\
        echo "nvcc: NVIDIA (R) Cuda compiler driver"
        echo "Copyright (c) 2005-2024 NVIDIA Corporation"
        echo "Cuda compilation tools, release {major_minor}, V{nvcc_full}"
        """,
    )
    return root


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    out_dir: Path,
    name: str = "canary",
    version: str = "0.1.0",
    tag: str = "cp311-cp311-linux_x86_64",
    files: dict[str, bytes] | None = None,
) -> Path:
    """A small, valid wheel (METADATA, WHEEL, RECORD with hashes) holding files."""
    files = files or {f"{name}/__init__.py": b"x = 1\n", f"{name}/_C.so": b"\x7fELF not really\n"}
    info = f"{name}-{version}.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nA description.\n".encode()
    )
    members[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()
    rows = [[n, _record_hash(d), str(len(d))] for n, d in members.items()] + [[f"{info}/RECORD", "", ""]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    members[f"{info}/RECORD"] = buf.getvalue().encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def record_for(wheel: Path, target: str = "canary-cu124", key: str = "k1", **changes: object) -> Record:
    data = wheel.read_bytes()
    fields: dict[str, object] = dict(
        target=target,
        filename=wheel.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        package="canary",
        version="0.1.0+cu124torch2.5",
        label="cu124torch2.5",
        torch={"version": "2.5.1+cu124", "cuda": "12.4", "cxx11_abi": False, "build": "cu124"},
        cuda="12.4",
        python_tag="cp311",
        platform_tag="linux_x86_64",
        cuda_archs=["8.0", "9.0"],
        cxx11_abi=False,
        cache_key=key,
        flavour=None,
        toolchain={"nvcc": "12.4.131", "host_cxx": "c++ 12"},
        build={"seconds": 1.0, "jobs": 2},
        gate={"verdict": "pass"},
        created="2026-01-01T00:00:00+00:00",
    )
    fields.update(changes)
    return Record(**fields)  # type: ignore[arg-type]
