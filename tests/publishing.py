"""Test support for publishing: small, real wheels and wheelhouses made in milliseconds.

The wheels are genuine (METADATA with a Markdown long description, WHEEL, RECORD with hashes), so twine, pip and
pypiserver treat them like any other; their records carry a passing gate verdict, as the pipeline writes them.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from packaging.utils import parse_wheel_filename

from wheels.manifest import Record, Wheelhouse
from wheels.util import sha256_file

LABEL = "cu124torch2.5"


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


DESCRIPTION = ("text/markdown", "# {name}\n\nA wheel made by the test suite.\n")


def make_wheel(
    folder: Path,
    name: str = "demo",
    version: str = f"1.0+{LABEL}",
    payload: str = "",
    description: tuple[str, str] | None = DESCRIPTION,
) -> Path:
    """A pure-Python py3-none-any wheel; ``payload`` changes its bytes without changing its name. ``description``:
    (content type, long description), or None for none at all (as mmcv 2.1.0's wheel has)."""
    if description is None:
        tail = ""
    else:
        tail = f"Description-Content-Type: {description[0]}\n\n" + description[1].format(name=name)
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f'"""{name} for tests."""\nVALUE = {payload!r}\n'.encode(),
        f"{info}/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {name}\n"
            f"Version: {version}\n"
            "Summary: A wheel made by the test suite\n"
            "Requires-Python: >=3.9\n"
            f"{tail}"
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},{_hash(d)},{len(d)}\n" for n, d in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in files.items():
            zf.writestr(n, d)
        zf.writestr(f"{info}/RECORD", record)
    return path


def add_to_wheelhouse(house: Path, target: str, wheel: Path, verdict: str = "pass") -> Record:
    """Record a wheel in a wheelhouse the way the pipeline does (Wheelhouse.commit), with a gate verdict."""
    name, version, _, _ = parse_wheel_filename(wheel.name)
    rec = Record(
        target=target,
        filename=wheel.name,
        sha256=sha256_file(wheel),
        size=wheel.stat().st_size,
        package=str(name),
        version=str(version),
        label=LABEL,
        torch={"version": "2.5.1+cu124", "cuda": "12.4", "cxx11_abi": False, "build": "cu124"},
        cuda="12.4",
        python_tag="py3",
        platform_tag="any",
        cuda_archs=["9.0"],
        cxx11_abi=False,
        cache_key="0" * 64,
        flavour=None,
        toolchain={},
        build={},
        gate={"verdict": verdict, "report": None, "checked_at": "2026-01-01T00:00:00+00:00"},
        created="2026-01-01T00:00:00+00:00",
    )
    Wheelhouse(house).commit(rec, wheel)
    return rec


def make_wheelhouse(house: Path, scratch: Path, specs: dict[str, tuple[str, str]]) -> dict[str, Record]:
    """specs: target -> (distribution name, version). Returns the records by target."""
    return {
        target: add_to_wheelhouse(house, target, make_wheel(scratch / target, name, version))
        for target, (name, version) in specs.items()
    }


def empty_simple_index(folder: Path) -> str:
    """A file:// simple index with no projects: a stand-in for the torch index, so tests stay off the network."""
    simple = folder / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    (simple / "index.html").write_text("<!DOCTYPE html><html><body></body></html>\n")
    return simple.as_uri() + "/"
