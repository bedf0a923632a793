"""Device code embedded in an extension: the ``.nv_fatbin`` section parsed in Python, so the gate needs no CUDA tools.

The section holds one or more fat binary containers (one per compiled translation unit), each a 16-byte header
followed by entries: a SASS cubin (an ELF for one ``sm_XY``) or PTX (for one ``compute_XY``). Layout, as cuobjdump
reads it (little-endian; the tests cross-check this module against ``cuobjdump --list-elf/--list-ptx``):

    container header: u32 magic 0xBA55ED50, u16 version, u16 header size, u64 size of the entries that follow
    entry header:     u16 kind (1 PTX, 2 ELF), u16 version, u32 header size, u64 payload size (padded),
                      u32 compressed size, u32 reserved, u16 code version minor, u16 major, u32 arch (80 = sm_80),
                      u32 name offset, u32 name size, u64 flags, ...
    flags: 0x1 64-bit code, 0x10 Linux host, 0x2000 compressed payload, 0x100000 arch-specific ("sm_90a").

A cubin's code runs on GPUs of the same major arch with an equal or higher minor (sm_80 code on an sm_86 GPU); an
arch-specific cubin (sm_90a) runs on GPUs of exactly its compute capability (9.0) and no other, not even a later minor
of its major. PTX is JIT-compiled by the driver for its own GPU and any later one. Everything else is "no kernel image
is available".
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX = 1
KIND_ELF = 2
FLAG_COMPRESSED = 0x2000
FLAG_ARCH_SPECIFIC = 0x100000  # "a" archs: sm_90a code runs only on compute capability 9.0 GPUs

_HEADER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQIIHHIIIQ")  # through the flags field: 48 bytes

# Example GPUs per arch, for messages users recognise.
GPUS = {
    "70": "V100",
    "75": "T4, RTX 20xx",
    "80": "A100, A800",
    "86": "A10, A40, RTX 30xx, RTX A6000",
    "87": "Jetson Orin",
    "89": "L4, L40S, RTX 40xx",
    "90": "H100, H200, GH200",
    "100": "B200",
    "120": "RTX 50xx, RTX PRO 6000",
}


class FatbinError(ValueError):
    """The section does not parse as fat binary containers."""


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str  # "sass" or "ptx"
    arch: str  # "80", "90a"
    compressed: bool
    code_version: tuple[int, int]  # cubin: ELF ABI version; PTX: ISA version (8.4 for CUDA 12.4)

    @property
    def name(self) -> str:
        return f"sm_{self.arch}" if self.kind == "sass" else f"compute_{self.arch}"


@dataclasses.dataclass(frozen=True)
class Section:
    """Where a .nv_fatbin section lies in a file: read by headers only (flash-attn's holds hundreds of MB of code)."""

    path: Path
    offset: int
    size: int

    def reader(self, stream: BinaryIO) -> Callable[[int, int], bytes]:
        def read_at(at: int, n: int) -> bytes:
            stream.seek(self.offset + at)
            return stream.read(n)

        return read_at


def iter_entries(source: bytes | Section) -> Iterator[Entry]:
    """Every entry of every container in a .nv_fatbin section (its bytes, or where it lies in a file)."""
    if isinstance(source, Section):
        with open(source.path, "rb") as stream:
            yield from _entries(source.reader(stream), source.size)
    else:
        yield from _entries(lambda at, n: source[at : at + n], len(source))


def _entries(read_at: Callable[[int, int], bytes], size: int) -> Iterator[Entry]:
    """Containers are 8-byte aligned, zero padding between; entries follow each other inside a container."""
    offset = 0
    while offset + _HEADER.size <= size:
        magic, _version, header_size, body_size = _HEADER.unpack(read_at(offset, _HEADER.size))
        if magic != FATBIN_MAGIC:
            if any(read_at(offset, 8)):
                raise FatbinError(f"no fat binary header at offset {offset:#x} (found {magic:#010x})")
            offset += 8  # alignment padding between containers
            continue
        if header_size < _HEADER.size:
            raise FatbinError(f"container at {offset:#x} has a {header_size}-byte header")
        end = offset + header_size + body_size
        if end > size:
            raise FatbinError(f"container at {offset:#x} runs {end - size} bytes past the end of the section")
        at = offset + header_size
        while at + _ENTRY.size <= end:
            (kind, _ver, entry_size, payload, _csize, _res, minor, major, arch, _noff, _nsize, flags) = _ENTRY.unpack(
                read_at(at, _ENTRY.size)
            )
            if entry_size < _ENTRY.size or at + entry_size + payload > end:
                raise FatbinError(f"entry at {at:#x} has a bad size ({entry_size} + {payload} bytes)")
            suffix = "a" if flags & FLAG_ARCH_SPECIFIC else ""
            if kind == KIND_ELF:
                yield Entry("sass", f"{arch}{suffix}", bool(flags & FLAG_COMPRESSED), (major, minor))
            elif kind == KIND_PTX:
                yield Entry("ptx", f"{arch}{suffix}", bool(flags & FLAG_COMPRESSED), (major, minor))
            at += entry_size + payload
        offset = end
        offset += -offset % 8


@dataclasses.dataclass(frozen=True)
class DeviceCode:
    sass: frozenset[str]  # {"80", "90"}
    ptx: frozenset[str]
    ptx_isa: frozenset[str] = frozenset()  # {"8.4"}

    @property
    def empty(self) -> bool:
        return not self.sass and not self.ptx

    def describe(self) -> str:
        parts = [f"sm_{a}" for a in sort_archs(self.sass)] + [f"compute_{a} (PTX)" for a in sort_archs(self.ptx)]
        return ", ".join(parts) or "none"


def device_code(source: bytes | Section | None) -> DeviceCode:
    if not source or (isinstance(source, Section) and source.size == 0):
        return DeviceCode(frozenset(), frozenset())
    entries = list(iter_entries(source))
    return DeviceCode(
        sass=frozenset(e.arch for e in entries if e.kind == "sass"),
        ptx=frozenset(e.arch for e in entries if e.kind == "ptx"),
        ptx_isa=frozenset(f"{e.code_version[0]}.{e.code_version[1]}" for e in entries if e.kind == "ptx"),
    )


# ---------------------------------------------------------------------------------------------------------------------
# What a target asks for, and whether the embedded code serves it

_ARCH_RE = re.compile(r"^(\d+)\.(\d+)(a?)(\+PTX)?$")


@dataclasses.dataclass(frozen=True)
class Requested:
    arch: str  # "90", "90a"
    ptx: bool  # "+PTX": PTX must be embedded as well

    @property
    def major(self) -> int:
        return int(_split(self.arch)[0])


def parse_requested(archs: Iterable[str]) -> list[Requested]:
    """TORCH_CUDA_ARCH_LIST form ("8.0", "9.0+PTX", "9.0a") -> what the wheel must carry."""
    out = []
    for arch in archs:
        match = _ARCH_RE.match(arch.strip())
        if not match:
            raise ValueError(f"not a CUDA arch: {arch!r}")
        major, minor, special, ptx = match.groups()
        out.append(Requested(f"{major}{minor}{special}", bool(ptx)))
    return out


def _split(arch: str) -> tuple[int, int, bool]:
    """ "86" -> (8, 6, False); "90a" -> (9, 0, True); "100" -> (10, 0, False); "120" -> (12, 0, False)."""
    special = arch.endswith("a")
    digits = arch.rstrip("a")
    return int(digits[:-1]), int(digits[-1]), special


def arch_key(arch: str) -> tuple[int, int, bool]:
    return _split(arch)


def sort_archs(archs: Iterable[str]) -> list[str]:
    return sorted(archs, key=_split)


def sass_for(requested: str, sass: Iterable[str]) -> str | None:
    """The cubin a GPU of arch ``requested`` would run, or None.

    Plain cubins run on their major's GPUs from their own minor up: the highest minor not above the GPU's wins (sm_80
    code serves 8.6). An arch-specific cubin ("90a") runs on GPUs of exactly its compute capability: it serves a
    request for "90" (a 9.0 GPU runs sm_90a code) but not "91" or "80". A request for arch-specific code ("90a": the
    target's kernels use wgmma or setmaxnreg) needs exactly that cubin: plain sm_90 code does not carry them.
    """
    major, minor, special = _split(requested)
    if special:
        return requested if requested in sass else None
    best: tuple[tuple[int, bool], str] | None = None
    for arch in sass:
        a_major, a_minor, a_special = _split(arch)
        if a_major != major or a_minor > minor or (a_special and a_minor != minor):
            continue
        rank = (a_minor, not a_special)  # the highest minor; of sm_90 and sm_90a, name the portable one
        if best is None or rank > best[0]:
            best = (rank, arch)
    return best[1] if best else None


def ptx_for(requested: str, ptx: Iterable[str]) -> str | None:
    """PTX the driver can JIT for arch ``requested``: any non-arch-specific PTX at or below it, the highest."""
    major, minor, _special = _split(requested)
    candidates = [a for a in ptx if not _split(a)[2] and _split(a)[:2] <= (major, minor)]
    return max(candidates, key=_split) if candidates else None


def dotted(arch: str) -> str:
    """ "90a" -> "9.0a", "100" -> "10.0": the TORCH_CUDA_ARCH_LIST spelling of an arch."""
    major, minor, special = _split(arch)
    return f"{major}.{minor}{'a' if special else ''}"


def gpus(arch: str) -> str:
    return GPUS.get(arch.rstrip("a"), "")
