"""ELF facts for the ABI gate, in the manner of auditwheel's ``elfutils.py``: small functions over sections.

Pure: they read files and return data; no environments, no programs. pyelftools finds the sections and parses the
small structures (dynamic tags, version needs and definitions). The dynamic symbol table is read straight from the
section bytes, because torch's libraries carry up to ~85,000 dynamic symbols and pyelftools' per-symbol parsing would
take seconds each; lookups go through the library's own GNU (or SysV) hash table, as the dynamic loader's do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .fatbin import Section

ELF_MAGIC = b"\x7fELF"

SHN_UNDEF = 0
STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE = 0, 1, 2, 10
VER_NDX_LOCAL, VER_NDX_GLOBAL = 0, 1
VERSYM_HIDDEN = 0x8000
VER_FLG_WEAK = 0x2


class NotElf(ValueError):
    """The file is not an ELF object pyelftools can read."""


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


@contextlib.contextmanager
def open_elf(path: Path) -> Iterator[ELFFile]:
    with open(path, "rb") as f:
        try:
            elf = ELFFile(f)
        except ELFError as e:
            raise NotElf(f"{path}: {e}") from None
        yield elf


# ---------------------------------------------------------------------------------------------------------------------
# Dynamic section


@dataclasses.dataclass(frozen=True)
class DynamicInfo:
    """What the dynamic loader reads first: who the object is, what it needs and where it looks for it."""

    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    elfclass: int  # 32 or 64
    machine: str  # "EM_X86_64"


def dynamic_info(elf: ELFFile) -> DynamicInfo:
    soname: str | None = None
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    for section in elf.iter_sections("SHT_DYNAMIC"):
        for tag in section.iter_tags():
            kind = tag.entry.d_tag
            if kind == "DT_NEEDED":
                needed.append(tag.needed)
            elif kind == "DT_SONAME":
                soname = tag.soname
            elif kind == "DT_RPATH":
                rpath += [p for p in tag.rpath.split(":") if p]
            elif kind == "DT_RUNPATH":
                runpath += [p for p in tag.runpath.split(":") if p]
    return DynamicInfo(soname, tuple(needed), tuple(rpath), tuple(runpath), elf.elfclass, elf["e_machine"])


def read_dynamic_info(path: Path) -> DynamicInfo:
    with open_elf(path) as elf:
        return dynamic_info(elf)


# ---------------------------------------------------------------------------------------------------------------------
# Symbol versions


@dataclasses.dataclass(frozen=True)
class VersionNeed:
    """One entry of .gnu.version_r: ``GLIBCXX_3.4.29`` needed from ``libstdc++.so.6``."""

    library: str
    version: str
    weak: bool = False


def version_needs(elf: ELFFile) -> Iterator[VersionNeed]:
    for section in elf.iter_sections("SHT_GNU_verneed"):
        for verneed, auxiliaries in section.iter_versions():
            for aux in auxiliaries:
                yield VersionNeed(verneed.name, aux.name, bool(aux["vna_flags"] & VER_FLG_WEAK))


def version_definitions(elf: ELFFile) -> Iterator[str]:
    """Version names an object defines (its own soname's base entry included, as the loader sees it)."""
    for section in elf.iter_sections("SHT_GNU_verdef"):
        for _verdef, auxiliaries in section.iter_versions():
            for aux in auxiliaries:
                yield aux.name
                break  # later auxiliaries name parent versions, not definitions


def _version_maps(elf: ELFFile) -> tuple[dict[int, str], dict[int, VersionNeed]]:
    """Version index -> name for definitions (vd_ndx) and needs (vna_other), as .gnu.version refers to them."""
    defined: dict[int, str] = {}
    needed: dict[int, VersionNeed] = {}
    for section in elf.iter_sections("SHT_GNU_verdef"):
        for verdef, auxiliaries in section.iter_versions():
            first = next(iter(auxiliaries), None)
            if first is not None:
                defined[verdef["vd_ndx"]] = first.name
    for section in elf.iter_sections("SHT_GNU_verneed"):
        for verneed, auxiliaries in section.iter_versions():
            for aux in auxiliaries:
                needed[aux["vna_other"]] = VersionNeed(verneed.name, aux.name, bool(aux["vna_flags"] & VER_FLG_WEAK))
    return defined, needed


# ---------------------------------------------------------------------------------------------------------------------
# Dynamic symbols


@dataclasses.dataclass(frozen=True)
class Symbol:
    name: str
    defined: bool
    binding: int  # STB_*
    version: str | None  # "GLIBCXX_3.4.29"; None when unversioned
    hidden: bool = False  # a non-default version (name@VER rather than name@@VER)
    library: str | None = None  # for undefined symbols: the library its version is needed from
    weak_version: bool = False

    @property
    def weak(self) -> bool:
        return self.binding == STB_WEAK


def gnu_hash(name: bytes) -> int:
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def sysv_hash(name: bytes) -> int:
    h = 0
    for c in name:
        h = (h << 4) + c
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


class DynamicSymbols:
    """An object's dynamic symbol table, read once from its section bytes; iteration and hash lookups.

    ``lookup`` answers what the dynamic loader would find in this object for one name: every definition of it
    (one per version) with its version name and whether that version is the default one.
    """

    def __init__(self, elf: ELFFile) -> None:
        self.little = elf.little_endian
        self.elfclass = elf.elfclass
        e = "<" if self.little else ">"
        self._sym = struct.Struct(e + ("IBBHQQ" if self.elfclass == 64 else "IIIBBH"))
        self._u32 = struct.Struct(e + "I")
        self._u16 = struct.Struct(e + "H")
        dynsym = next(iter(elf.iter_sections("SHT_DYNSYM")), None)
        if dynsym is None:
            self._symtab = b""
            self._strtab = b""
            self.count = 0
        else:
            self._symtab = dynsym.data()
            self._strtab = elf.get_section(dynsym["sh_link"]).data()
            self.count = len(self._symtab) // self._sym.size
        versym = next(iter(elf.iter_sections("SHT_GNU_versym")), None)
        self._versym = versym.data() if versym is not None else b""
        self._defined_versions, self._needed_versions = _version_maps(elf)
        self._gnu: tuple[int, int, int, int, list[int], list[int], bytes] | None = None
        self._sysv: tuple[list[int], list[int]] | None = None
        self._by_name: dict[str, list[int]] | None = None
        gnu = next(iter(elf.iter_sections("SHT_GNU_HASH")), None)
        if gnu is not None:
            self._gnu = self._parse_gnu_hash(gnu.data())
        else:
            sysv = next(iter(elf.iter_sections("SHT_HASH")), None)
            if sysv is not None:
                self._sysv = self._parse_sysv_hash(sysv.data())

    # -- raw access --------------------------------------------------------------------------------------------------

    def _entry(self, index: int) -> tuple[int, int, int, int]:
        """(st_name, st_info, st_shndx, versym) of symbol ``index``."""
        fields = self._sym.unpack_from(self._symtab, index * self._sym.size)
        if self.elfclass == 64:
            st_name, st_info, _other, st_shndx = fields[:4]
        else:
            st_name, _value, _size, st_info, _other, st_shndx = fields
        ver = self._u16.unpack_from(self._versym, index * 2)[0] if self._versym else VER_NDX_GLOBAL
        return st_name, st_info, st_shndx, ver

    def _name(self, offset: int) -> str:
        end = self._strtab.index(b"\0", offset)
        return self._strtab[offset:end].decode("utf-8", "replace")

    def symbol(self, index: int) -> Symbol:
        st_name, st_info, st_shndx, ver = self._entry(index)
        binding = st_info >> 4
        defined = st_shndx != SHN_UNDEF
        ndx = ver & 0x7FFF
        version = library = None
        weak_version = False
        if defined:
            version = self._defined_versions.get(ndx) if ndx > VER_NDX_GLOBAL else None
        elif ndx > VER_NDX_GLOBAL:
            need = self._needed_versions.get(ndx)
            if need is not None:
                version, library, weak_version = need.version, need.library, need.weak
        return Symbol(self._name(st_name), defined, binding, version, bool(ver & VERSYM_HIDDEN), library, weak_version)

    def __iter__(self) -> Iterator[Symbol]:
        for index in range(1, self.count):  # entry 0 is the null symbol
            yield self.symbol(index)

    # -- hash lookups ------------------------------------------------------------------------------------------------

    def _parse_gnu_hash(self, data: bytes) -> tuple[int, int, int, int, list[int], list[int], bytes]:
        e = "<" if self.little else ">"
        nbuckets, symoffset, bloom_size, bloom_shift = struct.unpack_from(e + "4I", data, 0)
        word = "Q" if self.elfclass == 64 else "I"
        bloom = list(struct.unpack_from(f"{e}{bloom_size}{word}", data, 16))
        buckets_at = 16 + bloom_size * (8 if self.elfclass == 64 else 4)
        buckets = list(struct.unpack_from(f"{e}{nbuckets}I", data, buckets_at))
        chains = data[buckets_at + 4 * nbuckets :]
        return nbuckets, symoffset, bloom_size, bloom_shift, bloom, buckets, chains

    def _parse_sysv_hash(self, data: bytes) -> tuple[list[int], list[int]]:
        e = "<" if self.little else ">"
        nbucket, nchain = struct.unpack_from(e + "2I", data, 0)
        buckets = list(struct.unpack_from(f"{e}{nbucket}I", data, 8))
        chains = list(struct.unpack_from(f"{e}{nchain}I", data, 8 + 4 * nbucket))
        return buckets, chains

    def _candidates(self, name: str, encoded: bytes, h_gnu: int | None) -> Iterator[int]:
        if self._gnu is not None:
            nbuckets, symoffset, bloom_size, bloom_shift, bloom, buckets, chains = self._gnu
            h = gnu_hash(encoded) if h_gnu is None else h_gnu
            bits = self.elfclass
            word = bloom[(h // bits) % bloom_size]
            mask = (1 << (h % bits)) | (1 << ((h >> bloom_shift) % bits))
            if word & mask != mask:
                return
            index = buckets[h % nbuckets]
            if index < symoffset:
                return
            while True:
                chain = self._u32.unpack_from(chains, (index - symoffset) * 4)[0]
                if chain | 1 == h | 1:
                    yield index
                if chain & 1:
                    return
                index += 1
        elif self._sysv is not None:
            buckets, chains = self._sysv
            index = buckets[sysv_hash(encoded) % len(buckets)]
            while index:
                yield index
                index = chains[index]
        else:
            if self._by_name is None:
                self._by_name = {}
                for index in range(1, self.count):
                    self._by_name.setdefault(self._name(self._entry(index)[0]), []).append(index)
            yield from self._by_name.get(name, [])

    def lookup(self, name: str, h_gnu: int | None = None) -> list[Symbol]:
        """Every exported definition of ``name`` (one per version). ``h_gnu``: its precomputed GNU hash."""
        encoded = name.encode()
        found = []
        for index in self._candidates(name, encoded, h_gnu):
            st_name, st_info, st_shndx, _ver = self._entry(index)
            if st_shndx == SHN_UNDEF or st_info >> 4 == STB_LOCAL:
                continue
            if self._name(st_name) != name:
                continue
            found.append(self.symbol(index))
        return found


def read_symbols(path: Path) -> DynamicSymbols:
    with open_elf(path) as elf:
        return DynamicSymbols(elf)


def undefined_symbols(symbols: DynamicSymbols) -> Iterator[Symbol]:
    """What an object needs from others: undefined dynamic symbols, weak ones included (callers decide)."""
    for sym in symbols:
        if not sym.defined and sym.name:
            yield sym


def defined_symbols(symbols: DynamicSymbols) -> Iterator[Symbol]:
    for sym in symbols:
        if sym.defined and sym.name and sym.binding != STB_LOCAL:
            yield sym


# ---------------------------------------------------------------------------------------------------------------------
# Everything the gate needs about one file, read in one pass


@dataclasses.dataclass(frozen=True)
class ElfFacts:
    path: Path
    dynamic: DynamicInfo
    needs: tuple[VersionNeed, ...]
    undefined: tuple[Symbol, ...]
    defined: tuple[Symbol, ...]
    fatbin: bytes | Section | None  # where the .nv_fatbin section (device code) lies; None when absent

    def defines(self, name: str) -> bool:
        return any(s.name == name for s in self.defined)


def read_facts(path: Path) -> ElfFacts:
    with open_elf(path) as elf:
        symbols = DynamicSymbols(elf)
        fatbin = elf.get_section_by_name(".nv_fatbin")
        return ElfFacts(
            path=path,
            dynamic=dynamic_info(elf),
            needs=tuple(version_needs(elf)),
            undefined=tuple(undefined_symbols(symbols)),
            defined=tuple(defined_symbols(symbols)),
            fatbin=Section(path, fatbin["sh_offset"], fatbin["sh_size"])
            if fatbin is not None and fatbin["sh_type"] != "SHT_NOBITS"
            else None,
        )


def elf_header(stream: BinaryIO) -> tuple[int, int, int] | None:
    """(class, data encoding, e_machine) from an ELF header, or None: the loader's test for a usable library."""
    head = stream.read(20)
    if len(head) < 20 or head[:4] != ELF_MAGIC:
        return None
    elfclass, data = head[4], head[5]
    machine = struct.unpack_from("<H" if data == 1 else ">H", head, 18)[0]
    return elfclass, data, machine
