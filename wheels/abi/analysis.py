"""Link a wheel's ELF files the way the dynamic loader will at run time, from facts a probe gathered. Pure.

Input: the installed files of the wheel and where the runtime lives (the interpreter, torch, the system's library
search). Output: per file, what it loads, which DT_NEEDED entries are not found, which needed symbol versions the
found libraries lack, and which undefined symbols nothing in its scope defines.

A wheel's shared objects are of three kinds, and all are checked:

* extension modules define ``PyInit_<name>``: Python imports them (canary._C, mmcv._ext, flash_attn_2_cuda);
* torch operator libraries link torch, define no ``PyInit_*`` and are no other file's dependency: the package loads
  them with ``torch.ops.load_library(path)`` and they register operators through TORCH_LIBRARY (xformers/_C.so);
* libraries: the rest, loaded as a dependency of the others (DT_NEEDED) or by the package itself (ctypes).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .elf import STB_WEAK, ElfFacts, Symbol, VersionNeed, is_elf, read_facts
from .loader import Loaded, LoaderModel, Missing, System, resolve, unique

_EXT_SUFFIX = re.compile(r"\.so(\.\d+)*$")
_DRIVER_SYMBOL = re.compile(r"^(cu[A-Z]|nvml)")
# torch's own libraries, as DT_NEEDED names them (libtorch_cpu.so, libc10_cuda.so, libtorch_python.so, ROCm's _hip).
_TORCH_LIBRARY = re.compile(r"^lib(?:torch|c10)(?:_\w+)?\.so(?:\.\d+)*$")

MODULE, TORCH_LIBRARY, LIBRARY = "module", "torch-library", "library"
KINDS = {MODULE: "extension module", TORCH_LIBRARY: "torch operator library", LIBRARY: "library"}
PLURALS = {MODULE: "extension modules", TORCH_LIBRARY: "torch operator libraries", LIBRARY: "libraries"}


@dataclasses.dataclass(frozen=True)
class WheelFile:
    member: str  # path as the wheel's RECORD names it: "canary/_C.cpython-311-x86_64-linux-gnu.so"
    path: Path  # where it is installed
    facts: ElfFacts
    module: str | None  # "canary._C" when it is a Python extension module (it defines PyInit_<name>)
    links_torch: bool = False  # needs a torch library, directly or through a library of the wheel
    needed_by: tuple[str, ...] = ()  # the wheel's files that name it in DT_NEEDED: it is loaded as their dependency

    @property
    def kind(self) -> str:
        if self.module is not None:
            return MODULE
        if self.links_torch and not self.needed_by:
            return TORCH_LIBRARY
        return LIBRARY

    @property
    def root(self) -> bool:
        """Loaded on its own (imported, torch.ops.load_library, ctypes), not only as another file's dependency."""
        return self.kind != LIBRARY or not self.needed_by


def module_name(member: str) -> str:
    """ "mmcv/_ext.cpython-311-x86_64-linux-gnu.so" -> "mmcv._ext"."""
    parts = member.split("/")
    parts[-1] = parts[-1].split(".", 1)[0]
    return ".".join(parts)


def wheel_files(installed: Mapping[str, Path]) -> list[WheelFile]:
    """The ELF shared objects among a wheel's installed files, each with its kind (see the module's docstring)."""
    found: dict[str, tuple[Path, ElfFacts, str | None]] = {}
    for member, path in sorted(installed.items()):
        if not _EXT_SUFFIX.search(member) or not is_elf(path):
            continue
        facts = read_facts(path)
        stem = member.rsplit("/", 1)[-1].split(".", 1)[0]
        found[member] = (path, facts, module_name(member) if facts.defines(f"PyInit_{stem}") else None)
    needed = {member: set(facts.dynamic.needed) for member, (_, facts, _) in found.items()}
    needed_by: dict[str, tuple[str, ...]] = {}
    for member, (_, facts, _) in found.items():
        names = _names(member, facts)
        needed_by[member] = tuple(other for other in found if other != member and names & needed[other])
    # Linking torch passes up through the wheel's own libraries: an operator library may reach torch through one.
    torch = {member for member, names in needed.items() if any(_TORCH_LIBRARY.match(n) for n in names)}
    pending = list(torch)
    while pending:
        for user in needed_by[pending.pop()]:
            if user not in torch:
                torch.add(user)
                pending.append(user)
    return [
        WheelFile(member, path, facts, module, member in torch, needed_by[member])
        for member, (path, facts, module) in found.items()
    ]


def _names(member: str, facts: ElfFacts) -> set[str]:
    """What a DT_NEEDED entry calls a file: its soname, or its file name."""
    return {n for n in (facts.dynamic.soname, member.rsplit("/", 1)[-1]) if n}


def describe_kinds(files: Iterable[WheelFile]) -> str:
    """ "1 torch operator library", "3 shared objects (2 extension modules, 1 library)": what a check looked at."""
    counts = {kind: 0 for kind in KINDS}
    for f in files:
        counts[f.kind] += 1
    parts = [f"{n} {KINDS[k] if n == 1 else PLURALS[k]}" for k, n in counts.items() if n]
    if len(parts) == 1:
        return parts[0]
    return f"{sum(counts.values())} shared objects ({', '.join(parts)})"


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
    via: str | None = None  # the wheel's file whose loading brings this library in; None: it is loaded on its own


def link(files: list[WheelFile], runtime: Runtime) -> list[Linkage]:
    """Load the interpreter, then torch, then each of the wheel's files, and resolve every file's undefined symbols.

    Files loaded on their own (modules, operator libraries, libraries no other file needs) are loaded as dlopen
    would; the wheel's libraries they bring in are resolved in the same scope (global, then the loaded object's
    tree: how glibc scopes a dlopened object's dependencies). A library of the wheel that no file brought in (the
    loader found another copy first) is loaded on its own.
    """
    model = LoaderModel(runtime.system)
    exe_tree = model.load(runtime.executable)
    exe = exe_tree[0]
    global_scope = list(exe_tree)
    if runtime.torch_global_deps is not None:
        global_scope += model.load(runtime.torch_global_deps, loader=exe)
    global_scope = unique(global_scope)
    if runtime.torch_c is not None:
        model.load(runtime.torch_c, loader=exe)
    by_path = {Path(os.path.realpath(f.path)): f for f in files}
    out: list[Linkage] = []
    done: set[str] = set()
    for file in [f for f in files if f.root] + [f for f in files if not f.root]:
        if file.member in done:
            continue
        start = len(model.missing)
        tree = model.load(file.path, loader=exe)
        missing = _dedupe(model.missing[start:])
        scope = unique(global_scope + tree)
        by_name = {name: obj for obj in tree for name in obj.names}
        out.append(_resolve(model, file, tree, scope, by_name, missing, via=None))
        done.add(file.member)
        for obj in tree[1:]:
            dep = by_path.get(obj.path)
            if dep is None or dep.member in done or dep.root:
                continue
            out.append(_resolve(model, dep, _subtree(obj, by_name), scope, by_name, missing, via=file.member))
            done.add(dep.member)
    return out


def _subtree(start: Loaded, by_name: Mapping[str, Loaded]) -> list[Loaded]:
    """``start`` and what its DT_NEEDED entries bring in, breadth first, within one loaded tree."""
    order, seen = [start], {id(start)}
    for obj in order:  # grows while it is walked
        for needed in obj.info.needed:
            dep = by_name.get(needed)
            if dep is not None and id(dep) not in seen:
                seen.add(id(dep))
                order.append(dep)
    return order


def _resolve(
    model: LoaderModel,
    file: WheelFile,
    tree: list[Loaded],
    scope: list[Loaded],
    by_name: Mapping[str, Loaded],
    missing: list[Missing],
    via: str | None,
) -> Linkage:
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
    for need in file.facts.needs:
        obj = by_name.get(need.library)
        if obj is None or need.weak:
            continue
        if need.version not in model.versions(obj):
            missing_versions.append((need, obj.path))
    return Linkage(
        file=file,
        loads=[o.path for o in tree[1:]],
        missing=missing,  # of the whole tree: a library's linkage shares its loader's
        missing_versions=missing_versions,
        unresolved=unresolved,
        driver_symbols=driver,
        checked=len(refs),
        via=via,
    )


def _dedupe(missing: list[Missing]) -> list[Missing]:
    seen: set[tuple[str, Path]] = set()
    out = []
    for m in missing:
        if (m.needed, m.by) not in seen:
            seen.add((m.needed, m.by))
            out.append(m)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# What the import check loads, after `import torch`


@dataclasses.dataclass(frozen=True)
class Load:
    """One thing the import check loads into the probe's process, as the package would."""

    kind: str  # MODULE or TORCH_LIBRARY
    name: str  # the module ("canary._C"), or the library as the wheel names it ("xformers/_C.so")
    path: str | None = None  # the installed library, for torch.ops.load_library

    @property
    def statement(self) -> str:
        return f"import {self.name}" if self.kind == MODULE else f"torch.ops.load_library({self.name!r})"


def load_plan(files: Iterable[WheelFile], modules: Iterable[str]) -> list[Load]:
    """The recipe's modules first (they prove the package loads), then every module and operator library the wheel
    holds. A recipe may name an operator library as a module ("xformers._C"): it is loaded as what its file is."""
    files = list(files)
    by_module = {module_name(f.member): f for f in files}
    plan: list[Load] = []
    for name in modules:
        file = by_module.get(name)
        if file is not None and file.kind == TORCH_LIBRARY:
            plan.append(Load(TORCH_LIBRARY, file.member, str(file.path)))
        else:
            plan.append(Load(MODULE, name))  # by its file when the wheel has one, else importlib (the probe decides)
    for file in files:
        if file.module is not None:
            plan.append(Load(MODULE, file.module))
        elif file.kind == TORCH_LIBRARY:
            plan.append(Load(TORCH_LIBRARY, file.member, str(file.path)))
    return list(dict.fromkeys(plan))
