"""A model of what the dynamic loader does when Python imports torch and then an extension module.

Pure: it reads ELF files and the facts a probe gathered (paths, ``ldconfig -p`` output, LD_LIBRARY_PATH); it creates
no environment and runs no program. It follows glibc's rules (ld.so(8)):

* a DT_NEEDED name already loaded (matched by soname or by the name it was loaded as) is reused: this is how an
  extension built by torch's cpp_extension, which has no RPATH, finds libc10.so after ``import torch``;
* otherwise the requesting object's DT_RPATH, then its loaders' DT_RPATHs (only when it has no DT_RUNPATH), then
  LD_LIBRARY_PATH, then its DT_RUNPATH, then the ld.so cache, then the default folders; ``$ORIGIN`` is the folder of
  the object whose path list it is; a candidate of another ELF class or machine is skipped.

Symbols are looked up the way ``dlopen(RTLD_LOCAL)`` scopes them: the global scope (the executable and its
dependencies, plus what torch loads with RTLD_GLOBAL) and then the module's own dependency tree, breadth first.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .elf import DynamicInfo, DynamicSymbols, Symbol, elf_header, gnu_hash, open_elf, read_dynamic_info, read_symbols
from .elf import version_definitions as _version_definitions

# Libraries the NVIDIA driver installs on GPU hosts: a machine without a GPU cannot resolve them, and that is fine.
DRIVER_LIBRARIES = ("libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1", "libcudadebugger.so.1")

# glibc's built-in search folders (Debian/Ubuntu multiarch first, then the classic ones).
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")

_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")


def parse_ldconfig(text: str) -> dict[str, tuple[str, ...]]:
    """``ldconfig -p`` output -> soname -> paths in cache order (every ABI: candidates are checked when used)."""
    cache: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _LDCONFIG_LINE.match(line)
        if match:
            cache.setdefault(match.group(1), []).append(match.group(3))
    return {name: tuple(paths) for name, paths in cache.items()}


def expand_origin(entry: str, origin: Path, lib: str = "lib64", platform: str = "x86_64") -> str:
    """Substitute $ORIGIN / ${ORIGIN} (and $LIB, $PLATFORM) in one RPATH/RUNPATH entry."""
    for name, value in (("ORIGIN", str(origin)), ("LIB", lib), ("PLATFORM", platform)):
        entry = entry.replace("${" + name + "}", value).replace("$" + name, value)
    return entry


@dataclasses.dataclass(frozen=True)
class System:
    """Where the loader looks beyond RPATHs: taken from the environment the extension will be imported in."""

    ld_library_path: tuple[str, ...] = ()
    cache: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_dirs: tuple[str, ...] = DEFAULT_DIRS


@dataclasses.dataclass(eq=False)
class Loaded:
    path: Path  # resolved (real) path
    names: set[str]  # the names it answers to: its soname and the DT_NEEDED strings that found it
    info: DynamicInfo
    loader: Loaded | None  # the object whose DT_NEEDED (or dlopen) brought it in

    @property
    def label(self) -> str:
        return self.info.soname or self.path.name


@dataclasses.dataclass(frozen=True)
class Missing:
    needed: str
    by: Path
    searched: tuple[str, ...]

    @property
    def driver(self) -> bool:
        return self.needed in DRIVER_LIBRARIES


class LoaderModel:
    """Objects loaded into one process, in load order; ``load`` adds one object and its dependencies."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.objects: list[Loaded] = []
        self._by_path: dict[Path, Loaded] = {}
        self._symbols: dict[Path, DynamicSymbols | None] = {}
        self._versions: dict[Path, frozenset[str]] = {}
        self.missing: list[Missing] = []

    # -- loading -----------------------------------------------------------------------------------------------------

    def find_loaded(self, name: str) -> Loaded | None:
        for obj in self.objects:
            if name in obj.names:
                return obj
        return None

    def load(self, path: Path, loader: Loaded | None = None) -> list[Loaded]:
        """Load ``path`` (as dlopen would) with its dependency tree; return that tree, breadth first, itself first."""
        root = self._add(Path(path), loader, name=None)
        order = [root]
        seen = {id(root)}
        queue = [root]
        while queue:
            current = queue.pop(0)
            for needed in current.info.needed:
                dep = self.find_loaded(needed)
                if dep is None:
                    found, searched = self._search(needed, current)
                    if found is None:
                        self.missing.append(Missing(needed, current.path, searched))
                        continue
                    dep = self._by_path.get(found) or self._add(found, current, name=needed)
                dep.names.add(needed)
                if id(dep) not in seen:
                    seen.add(id(dep))
                    order.append(dep)
                    queue.append(dep)
        return order

    def _add(self, path: Path, loader: Loaded | None, name: str | None) -> Loaded:
        real = Path(os.path.realpath(path))
        existing = self._by_path.get(real)
        if existing is not None:
            return existing
        info = read_dynamic_info(real)
        names = {n for n in (info.soname, name) if n}
        obj = Loaded(real, names, info, loader)
        self.objects.append(obj)
        self._by_path[real] = obj
        return obj

    def _search_dirs(self, requester: Loaded) -> list[str]:
        dirs: list[str] = []
        if not requester.info.runpath:
            obj: Loaded | None = requester
            while obj is not None:
                if not obj.info.runpath:
                    dirs += [expand_origin(p, obj.path.parent) for p in obj.info.rpath]
                obj = obj.loader
        dirs += list(self.system.ld_library_path)
        dirs += [expand_origin(p, requester.path.parent) for p in requester.info.runpath]
        return dirs

    def _search(self, needed: str, requester: Loaded) -> tuple[Path | None, tuple[str, ...]]:
        if "/" in needed:
            candidate = Path(expand_origin(needed, requester.path.parent))
            return (candidate if self._usable(candidate, requester) else None), (str(candidate),)
        dirs = self._search_dirs(requester)
        for folder in dirs:
            candidate = Path(folder) / needed
            if self._usable(candidate, requester):
                return candidate, tuple(dirs)
        for cached in self.system.cache.get(needed, ()):
            if self._usable(Path(cached), requester):
                return Path(cached), tuple(dirs) + ("ld.so.cache",)
        for folder in self.system.default_dirs:
            candidate = Path(folder) / needed
            if self._usable(candidate, requester):
                return candidate, tuple(dirs) + ("ld.so.cache",) + self.system.default_dirs
        return None, tuple(dirs) + ("ld.so.cache",) + self.system.default_dirs

    @staticmethod
    def _usable(candidate: Path, requester: Loaded) -> bool:
        """An ELF shared object of the requester's class and machine (the loader skips others, e.g. 32-bit ones)."""
        try:
            with open(candidate, "rb") as f:
                header = elf_header(f)
        except OSError:
            return False
        if header is None:
            return False
        want_class = 2 if requester.info.elfclass == 64 else 1
        if header[0] != want_class:
            return False
        with open_elf(candidate) as elf:
            return elf["e_machine"] == requester.info.machine

    # -- symbols -----------------------------------------------------------------------------------------------------

    def symbols(self, obj: Loaded) -> DynamicSymbols | None:
        if obj.path not in self._symbols:
            try:
                self._symbols[obj.path] = read_symbols(obj.path)
            except ValueError:
                self._symbols[obj.path] = None
        return self._symbols[obj.path]

    def versions(self, obj: Loaded) -> frozenset[str]:
        if obj.path not in self._versions:
            with open_elf(obj.path) as elf:
                self._versions[obj.path] = frozenset(_version_definitions(elf))
        return self._versions[obj.path]


@dataclasses.dataclass(frozen=True)
class Resolution:
    symbol: Symbol
    provider: Path | None  # None: unresolved


def resolve(model: LoaderModel, scope: Sequence[Loaded], refs: Iterable[Symbol]) -> list[Resolution]:
    """Look each reference up in ``scope`` (in order), matching versions as the loader does.

    A versioned reference (``name@GLIBCXX_3.4.29``) needs a definition with that version; an unversioned one takes
    a default-version or unversioned definition.
    """
    out = []
    for ref in refs:
        h = gnu_hash(ref.name.encode())
        provider = None
        for obj in scope:
            table = model.symbols(obj)
            if table is None:
                continue
            if any(_matches(ref, d) for d in table.lookup(ref.name, h)):
                provider = obj.path
                break
        out.append(Resolution(ref, provider))
    return out


def _matches(ref: Symbol, definition: Symbol) -> bool:
    if ref.version is None:
        return not definition.hidden
    return definition.version == ref.version or definition.version is None


def unique(objects: Iterable[Loaded]) -> list[Loaded]:
    seen: set[int] = set()
    out = []
    for obj in objects:
        if id(obj) not in seen:
            seen.add(id(obj))
            out.append(obj)
    return out
