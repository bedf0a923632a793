"""Requirement locks as data: parse, split, render, and the lock header. Pure functions, no I/O but reading text.

A lock is what `uv pip compile --generate-hashes` writes: ``name==version --hash=sha256:... ...`` per package, with
``\\`` continuations and ``#`` comments, under a header of our own that records how it was made::

    # profile: full
    # torch: cu121 ...
    # input: image/requirements.in sha256=...

The header lets `nox -s image` refuse a lock made for another profile, or one whose inputs have changed since.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from wheels.errors import ConfigError

_REQ = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:(?P<hex>[0-9a-f]{64})")
_HEADER = re.compile(r"^#\s*(?P<key>[a-z-]+):\s?(?P<value>.*)$")
HEADER_KEYS = (
    "profile",
    "torch",
    "python",
    "platform",
    "index",
    "input",
    "source",
    "without",
    "with",
    "sdist",
    "resolver",
)


@dataclasses.dataclass(frozen=True)
class Pin:
    """One locked package: exact version and every hash a file for it may have."""

    name: str
    version: str
    hashes: tuple[str, ...]

    @property
    def key(self) -> str:
        return str(canonicalize_name(self.name))

    def line(self) -> str:
        return f"{self.name}=={self.version} " + " ".join(f"--hash=sha256:{h}" for h in self.hashes)

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


@dataclasses.dataclass(frozen=True)
class Lock:
    pins: tuple[Pin, ...]
    header: Mapping[str, tuple[str, ...]]  # key -> values, in order (keys like "input" repeat)

    def first(self, key: str) -> str | None:
        values = self.header.get(key, ())
        return values[0] if values else None

    def inputs(self) -> dict[str, str]:
        """Recorded inputs: name -> sha256."""
        found: dict[str, str] = {}
        for value in self.header.get("input", ()):
            name, _, digest = value.rpartition(" sha256=")
            if name and digest:
                found[name] = digest.split()[0]
        return found

    def by_key(self) -> dict[str, Pin]:
        return {p.key: p for p in self.pins}


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations; keep comment lines as they are."""
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if buf:
            buf += " " + stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                lines.append(buf)
                buf = ""
            continue
        if stripped.endswith("\\") and not stripped.startswith("#"):
            buf = stripped.rstrip("\\").strip()
            continue
        lines.append(stripped)
    if buf:
        lines.append(buf)
    return lines


def parse_lock(text: str, where: str = "the lock") -> Lock:
    """Every pin must be exact (``==``) and carry at least one sha256: otherwise it is not a lock."""
    header: dict[str, list[str]] = {}
    pins: list[Pin] = []
    in_header = True
    for line in _logical_lines(text):
        if not line:
            continue
        if line.startswith("#"):
            if in_header:
                m = _HEADER.match(line)
                if m and m.group("key") in HEADER_KEYS:
                    header.setdefault(m.group("key"), []).append(m.group("value").strip())
            continue
        in_header = False
        if line.startswith("-"):
            raise ConfigError(
                f"{where} holds an option line {line.split()[0]!r}",
                why="index and find-links options belong to the build's settings, not to the lock",
                fix="remake the lock with `nox -s lock`",
            )
        m = _REQ.match(line)
        if not m:
            raise ConfigError(f"{where}: {line[:80]!r} is not an exact pin (name==version)", fix="remake the lock")
        hashes = tuple(dict.fromkeys(h.group("hex") for h in _HASH.finditer(line)))
        if not hashes:
            raise ConfigError(
                f"{where}: {m.group('name')}=={m.group('version')} has no sha256",
                why="the image installs with --require-hashes: every file must be known in advance",
                fix="remake the lock with `nox -s lock` (it passes --generate-hashes)",
            )
        pins.append(Pin(m.group("name"), m.group("version"), hashes))
    seen: set[str] = set()
    for pin in pins:
        if pin.key in seen:
            raise ConfigError(f"{where} pins {pin.name} twice", fix="remake the lock")
        seen.add(pin.key)
    return Lock(pins=tuple(pins), header={k: tuple(v) for k, v in header.items()})


def render_header(entries: Sequence[tuple[str, str]], title: Sequence[str]) -> str:
    """Title comment lines, a blank comment, then ``# key: value`` lines."""
    lines = [f"# {t}" if t else "#" for t in title]
    lines.append("#")
    lines += [f"# {key}: {value}" for key, value in entries]
    return "\n".join(lines) + "\n"


def split(pins: Iterable[Pin], ours: Iterable[str]) -> tuple[list[Pin], list[Pin]]:
    """(third-party, ours): our wheels get their own, later image layer, so rebuilding one does not reinstall torch."""
    keys = {str(canonicalize_name(o)) for o in ours}
    third, mine = [], []
    for pin in pins:
        (mine if pin.key in keys else third).append(pin)
    return third, mine


def render_requirements(pins: Iterable[Pin]) -> str:
    """A plain hash-pinned requirements file (what the installer inside the build reads)."""
    return "".join(pin.line() + "\n" for pin in sorted(pins, key=lambda p: p.key))


def stale_inputs(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """What differs between the inputs a lock was made from and today's: added, removed or changed."""
    problems = []
    for name in sorted(set(recorded) | set(current)):
        if name not in current:
            problems.append(f"{name} was an input but is not any more")
        elif name not in recorded:
            problems.append(f"{name} is a new input")
        elif recorded[name] != current[name]:
            problems.append(f"{name} changed")
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Wheel tags


def target_tags(python: str, platform: str) -> frozenset[Tag]:
    """Tags a wheel may carry to install into CPython ``python`` on ``platform`` ("x86_64-manylinux_2_35")."""
    m = re.fullmatch(r"(?P<arch>x86_64|aarch64)-manylinux_2_(?P<minor>\d+)", platform)
    if not m:
        raise ConfigError(f"Unsupported platform {platform!r}", fix='use e.g. "x86_64-manylinux_2_35"')
    arch, minor = m.group("arch"), int(m.group("minor"))
    plats = [f"manylinux_2_{i}_{arch}" for i in range(minor, 4, -1)]
    plats += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    major, minor_py = (int(x) for x in python.split("."))
    version = (major, minor_py)
    interpreter = f"cp{major}{minor_py}"
    return frozenset(cpython_tags(version, platforms=plats)) | frozenset(compatible_tags(version, interpreter, plats))


def wheel_fits(filename: str, tags: frozenset[Tag]) -> bool:
    if not filename.endswith(".whl"):
        return False
    try:
        _, _, _, file_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return bool(file_tags & tags)


def is_pure(filename: str) -> bool:
    """A wheel that runs on any Python 3 and any platform (py3-none-any)."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return all(t.abi == "none" and t.platform == "any" for t in tags)
