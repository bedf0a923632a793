"""Link a wheel's ELF files the way the dynamic loader will at run time, from facts a probe gathered. Pure.

Input: the installed files of the wheel and where the runtime lives (the interpreter, torch, the system's library
search). Output: per file, what it loads, which DT_NEEDED entries are not found, which needed symbol versions the
found libraries lack, and which undefined symbols nothing in its scope defines.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

from .elf import STB_WEAK, ElfFacts, Symbol, VersionNeed, is_elf, read_facts
from .loader import Loaded, LoaderModel, Missing, System, resolve, unique

_EXT_SUFFIX = re.compile(r"\.so(\.\d+)*$")
_DRIVER_SYMBOL = re.compile(r"^(cu[A-Z]|nvml)")


@dataclasses.dataclass(frozen=True)
class WheelFile:
    member: str  # path as the wheel's RECORD names it: "canary/_C.cpython-311-x86_64-linux-gnu.so"
    path: Path  # where it is installed
    facts: ElfFacts
    module: str | None  # "canary._C" when it is a Python extension module (it defines PyInit_<name>)


def module_name(member: str) -> str:
    """ "mmcv/_ext.cpython-311-x86_64-linux-gnu.so" -> "mmcv._ext"."""
    parts = member.split("/")
    parts[-1] = parts[-1].split(".", 1)[0]
    return ".".join(parts)


def wheel_files(installed: Mapping[str, Path]) -> list[WheelFile]:
    """The ELF shared objects among a wheel's installed files; extension modules recognised by their init symbol."""
    out = []
    for member, path in sorted(installed.items()):
        if not _EXT_SUFFIX.search(member) or not is_elf(path):
            continue
        facts = read_facts(path)
        stem = member.rsplit("/", 1)[-1].split(".", 1)[0]
        is_module = facts.defines(f"PyInit_{stem}")
        out.append(WheelFile(member, path, facts, module_name(member) if is_module else None))
    return out


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where an extension will be loaded: found by the gate's probe inside the environment."""

    executable: Path  # the interpreter binary (resolved)
    torch_c: Path | None  # torch/_C*.so: what `import torch` loads (locally)
    torch_global_deps: Path | None  # torch/lib/libtorch_global_deps.so: what torch loads with RTLD_GLOBAL
    system: System


@dataclasses.dataclass
class Linkage:
    file: WheelFile
    loads: list[Path]  # its dependency tree, breadth first, itself excluded
    missing: list[Missing]  # DT_NEEDED entries found nowhere
    missing_versions: list[tuple[VersionNeed, Path]]  # version needed from a library that does not define it
    unresolved: list[Symbol]  # undefined (non-weak) symbols nothing in scope defines
    driver_symbols: list[Symbol]  # unresolved, but expected from the NVIDIA driver, absent here
    checked: int  # undefined symbols looked up


def link(files: list[WheelFile], runtime: Runtime) -> list[Linkage]:
    """Load the interpreter, then torch, then each extension module, and resolve each module's undefined symbols."""
    model = LoaderModel(runtime.system)
    exe_tree = model.load(runtime.executable)
    exe = exe_tree[0]
    global_scope = list(exe_tree)
    if runtime.torch_global_deps is not None:
        global_scope += model.load(runtime.torch_global_deps, loader=exe)
    global_scope = unique(global_scope)
    if runtime.torch_c is not None:
        model.load(runtime.torch_c, loader=exe)
    out = []
    for file in files:
        if file.module is None:
            continue  # libraries of the wheel are checked through the modules that load them
        out.append(_link_one(model, exe, global_scope, file))
    return out


def _link_one(model: LoaderModel, exe: Loaded, global_scope: list[Loaded], file: WheelFile) -> Linkage:
    start = len(model.missing)
    tree = model.load(file.path, loader=exe)
    missing = _dedupe(model.missing[start:])
    scope = unique(global_scope + tree)
    refs = [s for s in file.facts.undefined if s.binding != STB_WEAK]
    resolutions = resolve(model, scope, refs)
    driver_missing = {m.needed for m in missing if m.driver}
    unresolved, driver = [], []
    for r in resolutions:
        if r.provider is not None:
            continue
        sym = r.symbol
        if driver_missing and (sym.library in driver_missing or _DRIVER_SYMBOL.match(sym.name)):
            driver.append(sym)
        else:
            unresolved.append(sym)
    missing_versions = []
    by_name = {name: obj for obj in tree for name in obj.names}
    for need in file.facts.needs:
        obj = by_name.get(need.library)
        if obj is None or need.weak:
            continue
        if need.version not in model.versions(obj):
            missing_versions.append((need, obj.path))
    return Linkage(
        file=file,
        loads=[o.path for o in tree[1:]],
        missing=missing,
        missing_versions=missing_versions,
        unresolved=unresolved,
        driver_symbols=driver,
        checked=len(refs),
    )


def _dedupe(missing: list[Missing]) -> list[Missing]:
    seen: set[tuple[str, Path]] = set()
    out = []
    for m in missing:
        if (m.needed, m.by) not in seen:
            seen.add((m.needed, m.by))
            out.append(m)
    return out
