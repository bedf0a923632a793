"""The gate's checks as pure functions: facts in, a :class:`CheckResult` with its own message and likely cause out.

No environments and no programs here: gate.py gathers the facts (a probe inside the fresh environment) and calls these.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from ..wheelfile import read_metadata, record_problems
from . import fatbin
from .analysis import KINDS, MODULE, PLURALS, TORCH_LIBRARY, Linkage, Load, WheelFile, describe_kinds
from .demangle import demangle, demangle_all
from .elf import Symbol
from .model import CheckResult, Expectation
from .policy import Ceilings, Policy, exceeding, fmt, highest_needs, platform_tag, private_needs, tag_glibc


@dataclasses.dataclass(frozen=True)
class TorchFacts:
    """What the torch a wheel is checked against reports about itself."""

    version: str  # "2.5.1+cu124"
    cuda: str | None  # "12.4"
    cxx11_abi: bool

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split("+", 1)[0].split(".")[:2])

    @property
    def abi_flag(self) -> int:
        return int(self.cxx11_abi)


# ---------------------------------------------------------------------------------------------------------------------
# 1. Integrity: the archive itself, before anything is installed


_REBUILD = "rebuild the wheel with `nox -s wheels` (never rename or edit a wheel by hand)"
_INTEGRITY_CAUSES = {
    "metadata": (
        "the wheel's metadata and its file name were written separately (a renamed or hand-edited wheel)",
        _REBUILD,
    ),
    "target": ("this is not the wheel the target builds", "check the wheel against its own target, or rebuild it"),
    "record": ("the archive changed after it was built (edited, or corrupted in transfer)", _REBUILD),
    "label": (
        "built for another torch than the one it is checked against",
        "check it against the torch build it was made for (--torch BUILD), or rebuild it for this torch with "
        "`nox -s wheels`",
    ),
    "python": ("built for another Python", "check it with the Python it was built for (--python X.Y), or rebuild it"),
    "module": ("built without its extension module (no compiler or no CUDA at build time)", _REBUILD),
}


def check_integrity(wheel: Path, expect: Expectation, torch: dict[str, Any] | None) -> CheckResult:
    """RECORD hashes, METADATA name and version vs the file name, the label vs the torch, tags vs the Python."""
    from ..envs import TorchInfo
    from ..label import local_label, parse_label

    problems: list[tuple[str, str]] = []  # (kind, message)
    name, file_version, _, tags = parse_wheel_filename(wheel.name)
    meta = read_metadata(wheel)
    meta_name = meta["Name"] or ""
    try:
        meta_version: Version | None = Version(meta["Version"] or "")
    except InvalidVersion:
        meta_version = None
        problems.append(("metadata", f"METADATA Version {meta['Version']!r} is not a valid version"))
    if canonicalize_name(meta_name) != name:
        problems.append(("metadata", f"METADATA Name {meta_name!r} disagrees with the file name's {name!r}"))
    if meta_version is not None and meta_version != file_version:
        problems.append(
            ("metadata", f"METADATA Version {meta_version} disagrees with the file name's version {file_version}")
        )
    if canonicalize_name(expect.package) != name:
        problems.append(("target", f"the wheel is {name}, the target builds {expect.package}"))
    if file_version.public != str(Version(expect.version)):
        problems.append(("target", f"the wheel's version {file_version.public} is not the target's {expect.version}"))
    problems += [("record", p) for p in record_problems(wheel)]
    label = file_version.local
    if not expect.label_required:
        pass  # an upstream wheel, checked as it is published: the symbol and CUDA checks judge its torch
    elif label is None:
        problems.append(("label", "the wheel has no local version label (+cuXXXtorchX.Y): its torch is unknowable"))
    elif torch is not None:
        info = TorchInfo(torch["version"], torch["cuda"], torch["cxx11_abi"], Path("."), "", "")
        want = local_label(info, expect.flavour, expect.default_flavour)
        if label != want:
            try:
                got = parse_label(label)
                why = []
                if got["torch"] != info.major_minor:
                    why.append(f"built for torch {got['torch']}, checked against torch {info.version}")
                if got["cuda"] != info.cuda:
                    why.append(f"built for CUDA {got['cuda']}, this torch is CUDA {info.cuda}")
                if got["cxx11_abi"] != info.cxx11_abi:
                    why.append("C++11 ABI differs")
                if got["flavour"] != (expect.flavour if expect.flavour != expect.default_flavour else None):
                    why.append(f"flavour {got['flavour']} is not the target's {expect.flavour}")
            except ValueError:
                why = ["the label is not in this pipeline's form"]
            problems.append(
                ("label", f"label {label} does not match the torch it is checked against ({want}): " + "; ".join(why))
            )
    py = expect.python
    want_tag = "cp" + py.replace(".", "") if py != "system" else (torch or {}).get("python_tag")
    if want_tag and not any(t.interpreter == want_tag for t in tags):
        problems.append(("python", f"tags {sorted(str(t) for t in tags)} do not fit Python {py} ({want_tag})"))
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
    for module in expect.extension_modules:
        if not _module_member(module, members):
            problems.append(("module", f"the wheel has no file for extension module {module}"))
    if not problems:
        return CheckResult(name="integrity", passed=True, summary="RECORD, name, version, label and tags agree")
    cause, fix = _INTEGRITY_CAUSES[problems[0][0]]
    return CheckResult(
        name="integrity",
        passed=False,
        summary=f"{len(problems)} problem(s)",
        problems=[message for _, message in problems],
        cause=cause,
        fix=fix,
    )


def _module_member(module: str, members: Iterable[str]) -> bool:
    path = module.replace(".", "/")
    pattern = re.compile(rf"^(?:[^/]+\.data/(?:platlib|purelib)/)?{re.escape(path)}\.[^/]*so$")
    return any(pattern.match(m) for m in members)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Symbols: every undefined symbol of every extension module resolves at run time

NEW_ABI = "std::__cxx11::"
_OLD_ABI = re.compile(r"std::(?:basic_string<|string\b|wstring\b|list<|basic_(?:i|o)?stringstream<|basic_stringbuf<)")
_TORCH_NS = re.compile(r"(?:^|[^\w:])(?:at|c10|torch|caffe2)::")
_CUDA_RUNTIME = re.compile(r"^(?:cuda[A-Z]|__cuda)")

CAUSES: dict[str, tuple[str, str]] = {
    "cxx11-abi": (
        "C++11 ABI differs: the extension was compiled with _GLIBCXX_USE_CXX11_ABI={ext}, torch {torch} with "
        "_GLIBCXX_USE_CXX11_ABI={flag}",
        "rebuild it against this torch with torch's cpp_extension (it passes torch's own ABI flag), or install the "
        "torch build whose ABI the wheel's label names",
    ),
    "other-torch": (
        "built against another torch: torch {torch} does not define it",
        "rebuild it against torch {torch} (`nox -s wheels`), or check it against the torch it was built for "
        "(--torch BUILD)",
    ),
    "system-too-old": (
        "needs a newer glibc or libstdc++ than this system has: built on a newer system",
        "build on an older base (the container backend) or use a newer system",
    ),
    "cuda-runtime": (
        "built against another CUDA runtime than the CUDA {cuda} one torch brings",
        "rebuild with a CUDA {cuda} toolkit",
    ),
    "missing-library": (
        "a library it needs is not found at run time",
        "install the package that provides it, or let auditwheel repair graft it into the wheel",
    ),
    "unknown": (
        "no library the module loads defines it: a library missing from its link line, or a symbol of a package "
        "that is not installed",
        "add the library that defines it to the extension's libraries/extra_link_args and rebuild",
    ),
}


def symbol_abi(demangled: str) -> str | None:
    """ "cxx11" when a symbol names a C++11-ABI std type, "pre-cxx11" for the old (COW) ones, else None."""
    if NEW_ABI in demangled:
        return "cxx11"
    if _OLD_ABI.search(demangled):
        return "pre-cxx11"
    return None


def classify_unresolved(sym: Symbol, demangled: str, torch: TorchFacts, missing_libraries: Iterable[str] = ()) -> str:
    """The likely cause of one unresolved symbol, as a key of CAUSES."""
    abi = symbol_abi(demangled)
    if abi is not None and (abi == "cxx11") != torch.cxx11_abi:
        return "cxx11-abi"
    if _TORCH_NS.search(demangled) or re.match(r"^_ZN?K?(2at|3c10|5torch|6caffe2)", sym.name):
        return "other-torch"
    if sym.version and re.match(r"^(GLIBC|GLIBCXX|CXXABI|GCC)_", sym.version):
        return "system-too-old"
    if sym.library and sym.library in set(missing_libraries):
        return "missing-library"
    if _CUDA_RUNTIME.match(sym.name):
        return "cuda-runtime"
    return "unknown"


def _cause_text(key: str, torch: TorchFacts, ext_abi_flag: int | None = None) -> tuple[str, str]:
    cause, fix = CAUSES[key]
    values = {
        "torch": torch.version,
        "flag": torch.abi_flag,
        "ext": ext_abi_flag if ext_abi_flag is not None else 1 - torch.abi_flag,
        "cuda": torch.cuda or "?",
    }
    return cause.format(**values), fix.format(**values)


def check_symbols(linkages: Sequence[Linkage], torch: TorchFacts) -> CheckResult:
    if not linkages:
        return CheckResult(
            name="symbols",
            passed=False,
            summary="the wheel holds no extension module, torch operator library or other shared object",
            cause="built without its extension (no compiler or no CUDA at build time)",
            fix="rebuild it with `nox -s wheels`",
        )
    problems: list[str] = []
    causes: collections.Counter[str] = collections.Counter()
    details: dict[str, Any] = {}
    names = demangle_all(s.name for link in linkages for s in link.unresolved + link.driver_symbols)
    for link in linkages:
        member = link.file.member if link.via is None else f"{link.file.member} (loaded by {link.via})"
        missing_libs = [m.needed for m in link.missing if not m.driver]
        for m in link.missing:
            if m.driver or link.via is not None:  # a tree's missing libraries are told once, by the file loading it
                continue
            problems.append(
                f"{member}: needs {m.needed} (DT_NEEDED of {m.by.name}), which is found nowhere: not loaded by torch, "
                "not in its RPATH/RUNPATH, LD_LIBRARY_PATH, the ld.so cache or the system folders"
            )
            causes["missing-library"] += 1
        for need, provider in link.missing_versions:
            problems.append(
                f"{member}: version `{need.version}' not found in {provider.name} ({provider}): "
                f"{CAUSES['system-too-old'][0]}"
            )
            causes["system-too-old"] += 1
        unresolved = []
        for sym in link.unresolved:
            key = classify_unresolved(sym, names[sym.name], torch, missing_libs)
            causes[key] += 1
            cause, _ = _cause_text(key, torch)
            shown = names[sym.name]
            mangled = f" [{sym.name}{'@' + sym.version if sym.version else ''}]" if shown != sym.name else ""
            problems.append(f"{member}: undefined symbol {shown}{mangled}: {cause}")
            unresolved.append({"symbol": sym.name, "demangled": shown, "version": sym.version, "cause": key})
        details[link.file.member] = {
            "kind": link.file.kind,
            "module": link.file.module,
            "loaded_by": link.via,
            "undefined_checked": link.checked,
            "loads": [str(p) for p in link.loads],
            "missing_libraries": [m.needed for m in link.missing],
            "unresolved": unresolved,
            "expected_from_driver": [s.name for s in link.driver_symbols],
        }
    checked = sum(link.checked for link in linkages)
    if not problems:
        note = ""
        driver = sum(len(link.driver_symbols) for link in linkages)
        if driver:
            note = f"; {driver} left to the NVIDIA driver, absent on this machine"
        return CheckResult(
            name="symbols",
            passed=True,
            summary=f"{checked} undefined symbols of {describe_kinds(link.file for link in linkages)} resolve "
            f"against torch {torch.version}, its CUDA runtime and the system{note}",
            details=details,
        )
    top = causes.most_common(1)[0][0]
    cause, fix = _cause_text(top, torch)
    breakdown = ", ".join(f"{k}: {n}" for k, n in causes.most_common())
    return CheckResult(
        name="symbols",
        passed=False,
        summary=f"{sum(causes.values())} unresolved at run time ({breakdown})",
        problems=problems,
        details=details,
        cause=cause,
        fix=fix,
    )


# ---------------------------------------------------------------------------------------------------------------------
# 3. C++11 ABI: the extension's std::string / std::list symbols vs torch._C._GLIBCXX_USE_CXX11_ABI


def check_cxx11_abi(files: Sequence[WheelFile], torch: TorchFacts) -> CheckResult:
    """Every module and every file that links torch must use torch's std::string ABI. A library that does not link
    torch passes no std type to it: its ABI is recorded, not judged (the symbols check catches a mismatch between it
    and the wheel's files that call it)."""
    problems: list[str] = []
    details: dict[str, Any] = {}
    seen: set[str] = set()
    for file in files:
        syms = [s.name for s in file.facts.undefined + file.facts.defined if s.name.startswith("_Z")]
        names = demangle_all(syms)
        new = [names[s] for s in syms if symbol_abi(names[s]) == "cxx11"]
        old = [names[s] for s in syms if symbol_abi(names[s]) == "pre-cxx11"]
        abi = "mixed" if new and old else "cxx11" if new else "pre-cxx11" if old else "neutral"
        judged = file.module is not None or file.links_torch
        details[file.member] = {
            "kind": file.kind,
            "abi": abi,
            "cxx11_symbols": len(new),
            "pre_cxx11_symbols": len(old),
            "compared_with_torch": judged,
        }
        if not judged:
            continue
        seen.add(abi)
        if abi == "mixed":
            problems.append(
                f"{file.member} mixes both ABIs: {len(new)} symbols use std::__cxx11 types (e.g. {new[0]}), "
                f"{len(old)} the old ones (e.g. {old[0]})"
            )
        elif abi == "cxx11" and not torch.cxx11_abi:
            problems.append(
                f"{file.member} uses the C++11 ABI ({len(new)} symbols with std::__cxx11 types, e.g. {new[0]}), "
                f"but torch {torch.version} uses the old one (_GLIBCXX_USE_CXX11_ABI=0)"
            )
        elif abi == "pre-cxx11" and torch.cxx11_abi:
            problems.append(
                f"{file.member} uses the old C++ ABI ({len(old)} symbols with pre-C++11 std::string/std::list, e.g. "
                f"{old[0]}), but torch {torch.version} uses the C++11 ABI (_GLIBCXX_USE_CXX11_ABI=1)"
            )
    torch_abi = f"_GLIBCXX_USE_CXX11_ABI={torch.abi_flag}"
    if problems:
        ext_flag = 1 if "cxx11" in seen or "mixed" in seen else 0
        cause, fix = _cause_text("cxx11-abi", torch, ext_abi_flag=ext_flag)
        return CheckResult(
            name="cxx11_abi",
            passed=False,
            summary=f"the extension's std::string/std::list ABI differs from torch's ({torch_abi})",
            problems=problems,
            details=details,
            cause=cause,
            fix=fix,
        )
    kinds = sorted(seen - {"neutral"})
    summary = (
        f"std::string/std::list symbols use the {'C++11' if torch.cxx11_abi else 'pre-C++11'} ABI, like torch "
        f"({torch_abi})"
        if kinds
        else f"no std::string/std::list in the extension's symbols: nothing ABI-specific to compare ({torch_abi})"
    )
    return CheckResult(name="cxx11_abi", passed=True, summary=summary, details=details)


# ---------------------------------------------------------------------------------------------------------------------
# 4. CUDA: the runtime the extension links, and the device code it carries


def cudart_major(needed: Iterable[str]) -> tuple[str, str] | None:
    """("libcudart.so.12", "12") from a DT_NEEDED list, or None."""
    for name in needed:
        match = re.match(r"^libcudart\.so\.(\d+)", name)
        if match:
            return name, match.group(1)
    return None


def arch_problems(member: str, code: fatbin.DeviceCode, requested: Sequence[fatbin.Requested]) -> list[tuple[str, str]]:
    """(problem, missing arch as TORCH_CUDA_ARCH_LIST spells it) for each requested arch the code does not serve."""
    out = []
    for want in requested:
        arch = want.arch
        gpus = fatbin.gpus(arch)
        on = f"sm_{arch} GPUs ({gpus})" if gpus else f"sm_{arch} GPUs"
        if fatbin.sass_for(arch, code.sass) is None:
            plain = arch.rstrip("a")
            jit = fatbin.ptx_for(arch, code.ptx)
            carries = f"it carries {code.describe()}"
            # Arch-specific cubins of the same major run on their own compute capability only: say so, or a reader
            # of "no SASS for sm_91" next to "sm_90a" would take it for a bug of the gate.
            other = [a for a in fatbin.sort_archs(code.sass) if a.endswith("a") and fatbin.arch_key(a)[0] == want.major]
            if other and arch == plain:
                runs_on = ", ".join(f"sm_{a} only on compute capability {fatbin.dotted(a[:-1])}" for a in other)
                carries += f" (arch-specific code runs on exactly its own GPUs: {runs_on})"
            if arch != plain and fatbin.sass_for(plain, code.sass):
                text = (
                    f"{member}: no SASS for sm_{arch}: {carries}, but the target asks for sm_{arch}'s arch-specific "
                    f"code, which plain sm_{plain} code cannot use"
                )
            elif jit:
                text = (
                    f"{member}: no SASS for sm_{arch}: {carries}, so on {on} the driver must JIT-compile PTX "
                    f"compute_{jit} at first use (minutes for large kernels)"
                )
            else:
                text = (
                    f"{member}: no SASS for sm_{arch}: {carries}; on {on} its kernels fail with "
                    '"CUDA error: no kernel image is available for execution on the device"'
                )
            out.append((text, fatbin.dotted(arch)))
        if want.ptx and fatbin.ptx_for(arch, code.ptx) is None:
            out.append(
                (
                    f"{member}: no PTX for compute_{arch} although the target asks for it (+PTX): GPUs newer than "
                    f'sm_{arch} get "no kernel image is available for execution on the device"',
                    f"{fatbin.dotted(arch)}+PTX",
                )
            )
    return out


def check_cuda(files: Sequence[WheelFile], torch: TorchFacts, cuda_archs: Sequence[str]) -> CheckResult:
    problems: list[str] = []
    details: dict[str, Any] = {}
    causes: list[tuple[str, str]] = []
    missing_archs: list[str] = []
    requested = fatbin.parse_requested(cuda_archs)
    torch_major = torch.cuda.split(".")[0] if torch.cuda else None
    runtimes: set[str] = set()
    sass: set[str] = set()
    ptx: set[str] = set()
    for file in files:
        entry: dict[str, Any] = {}
        details[file.member] = entry
        runtime = cudart_major(file.facts.dynamic.needed)
        if runtime:
            runtimes.add(runtime[0])
            entry["cudart"] = runtime[0]
            if torch_major is None:
                problems.append(f"{file.member} links {runtime[0]}, but torch {torch.version} is a CPU build")
                causes.append(
                    (
                        "a CUDA extension checked against a CPU build of torch",
                        "check it against the CUDA torch build it was made for (--torch BUILD)",
                    )
                )
            elif runtime[1] != torch_major:
                problems.append(
                    f"{file.member} links {runtime[0]} (the CUDA {runtime[1]} runtime), but torch {torch.version} "
                    f"brings the CUDA {torch.cuda} runtime (libcudart.so.{torch_major}): it fails to load, or loads a "
                    "second CUDA runtime"
                )
                causes.append(
                    (
                        f"built with a CUDA {runtime[1]} toolkit for a CUDA {torch.cuda} torch",
                        f"rebuild with a CUDA {torch.cuda} toolkit (torch and nvcc must agree in major.minor)",
                    )
                )
        try:
            code = fatbin.device_code(file.facts.fatbin)
        except fatbin.FatbinError as e:
            problems.append(f"{file.member}: its .nv_fatbin section does not parse ({e})")
            causes.append(("a damaged or unknown device-code container", "rebuild the wheel; report it if it persists"))
            continue
        entry.update(sass=fatbin.sort_archs(code.sass), ptx=fatbin.sort_archs(code.ptx), ptx_isa=sorted(code.ptx_isa))
        if code.empty:
            continue
        entry["runs"] = {
            fatbin.dotted(r.arch): f"sm_{runs}" for r in requested if (runs := fatbin.sass_for(r.arch, code.sass))
        }
        sass |= code.sass
        ptx |= code.ptx
        for text, arch in arch_problems(file.member, code, requested):
            problems.append(text)
            if arch not in missing_archs:
                missing_archs.append(arch)
    wanted = ";".join(cuda_archs)
    if missing_archs:
        causes.append(
            (
                "built with another arch list than the target's (TORCH_CUDA_ARCH_LIST, or the package's own "
                "setting such as FLASH_ATTN_CUDA_ARCHS)",
                f'rebuild with the target\'s arch list, --cuda-archs "{wanted}" (missing: {", ".join(missing_archs)})',
            )
        )
    if requested and not sass and not ptx:
        problems.append(
            f"no file of the wheel carries device code, but the target asks for {wanted}: every kernel launch fails "
            'with "no kernel image is available for execution on the device"'
        )
        causes.append(
            (
                "built without CUDA (no GPU at build time and FORCE_CUDA unset, or no CUDA toolkit)",
                "rebuild with FORCE_CUDA=1 and a CUDA toolkit (the pipeline sets both)",
            )
        )
    if problems:
        cause, fix = causes[0] if causes else (None, None)
        return CheckResult(
            name="cuda",
            passed=False,
            summary=f"{len(problems)} problem(s) with the CUDA runtime or device code (target: {wanted or 'no archs'})",
            problems=problems,
            details=details,
            cause=cause,
            fix=fix,
        )
    code_all = fatbin.DeviceCode(frozenset(sass), frozenset(ptx))
    linked = ", ".join(sorted(runtimes)) or "no CUDA runtime"
    covers = f"covers {wanted}" if wanted else "(no archs requested)"
    # Which requested archs only arch-specific code serves (9.0 by sm_90a): right, and worth saying so.
    specific = [
        f"{fatbin.dotted(r.arch)} by sm_{runs}"
        for r in requested
        if not r.arch.endswith("a") and (runs := fatbin.sass_for(r.arch, sass)) and runs.endswith("a")
    ]
    if specific:
        covers += f" ({', '.join(specific)}: arch-specific code runs on exactly its compute capability)"
    return CheckResult(
        name="cuda",
        passed=True,
        summary=f"links {linked} (torch: CUDA {torch.cuda}); device code {code_all.describe()} {covers}",
        details=details,
    )


# ---------------------------------------------------------------------------------------------------------------------
# 5. Portability: symbol versions vs the image base, and the platform tag they really need


def check_portability(
    files: Sequence[WheelFile], base: Ceilings, policy: Policy, wheel_platforms: Iterable[str], arch: str = "x86_64"
) -> tuple[CheckResult, str]:
    problems: list[str] = []
    needs = [n for f in files for n in f.facts.needs]
    highest = highest_needs(needs)
    who: dict[str, str] = {}
    for family, need in highest.items():
        who[family] = next(f.member for f in files if any(n.version == need.symbol_version for n in f.facts.needs))
    for need, ceiling in exceeding(highest, base):
        problems.append(
            f"{who[need.family]} needs {need.symbol_version} (from {need.library}), but {base.name} provides "
            f'{need.family.upper()} versions up to {fmt(ceiling)}: it fails to load there with "version '
            f"`{need.symbol_version}' not found\""
        )
    for f in files:
        for n in private_needs(f.facts.needs):
            problems.append(
                f"{f.member} needs {n.version} from {n.library}: a private interface that changes with "
                "every release of that library"
            )
    tag = platform_tag(highest, policy, arch)
    needed_glibc = tag_glibc(tag)
    for platform in wheel_platforms:
        promised = tag_glibc(platform)
        if promised is not None and needed_glibc is not None and promised < needed_glibc:
            problems.append(
                f"the file name's platform tag {platform} promises glibc {promised[0]}.{promised[1]}, but the wheel "
                f"needs {tag}: installers would put it on systems where it cannot load"
            )
    listed = ", ".join(n.symbol_version for _, n in sorted(highest.items())) or "no versioned system symbols"
    details = {
        "highest": {f: {"version": n.symbol_version, "library": n.library, "file": who[f]} for f, n in highest.items()},
        "base": base.name,
        "platform_tag": tag,
    }
    if problems:
        return (
            CheckResult(
                name="portability",
                passed=False,
                summary=f"needs {listed} ({tag}); does not fit the image base {base.name}",
                problems=problems,
                details=details,
                cause=f"built on a system newer than the image base {base.name} ({base.description})",
                fix="build in an older build image (the container backend), or choose a newer image base "
                "(--base / WHEELS_IMAGE_BASE)",
            ),
            tag,
        )
    return (
        CheckResult(
            name="portability",
            passed=True,
            summary=f"needs {listed} ({tag}); fits the image base {base.name}",
            details=details,
        ),
        tag,
    )


# ---------------------------------------------------------------------------------------------------------------------
# 6. Import: what the probe saw when it loaded each module and operator library after `import torch`


def check_loaded(plan: Sequence[Load], results: Sequence[dict[str, Any]] | None, died: str) -> CheckResult:
    """The import verdict from the probe's results (one per item of ``plan``), or from why its process died."""
    if not plan:
        return CheckResult(
            name="import",
            passed=False,
            summary="the wheel holds no extension module or torch operator library to load",
            cause="built without its extension (no compiler or no CUDA at build time)",
            fix="rebuild it with `nox -s wheels`",
        )
    if results is None:
        return CheckResult(
            name="import",
            passed=False,
            summary="the loading process died",
            problems=[f"import torch; {'; '.join(item.statement for item in plan)}: {died}"],
            cause="a crash while loading the extension (static initialisers, a mismatched torch)",
        )
    problems = []
    details: dict[str, Any] = {}
    for item, result in zip(plan, results, strict=True):
        details[item.name] = {"kind": item.kind, **result}
        err = result["error"]
        if not err:
            continue
        symbol = re.search(r"undefined symbol: (\S+)", err)
        shown = f" ({demangle(symbol.group(1))})" if symbol and symbol.group(1).startswith("_Z") else ""
        problems.append(f"{item.statement} failed: {err}{shown}")
    if problems:
        return CheckResult(
            name="import",
            passed=False,
            summary="import failed",
            problems=problems,
            details=details,
            cause="see the symbols and cxx11_abi checks for what the loader could not find",
        )
    return CheckResult(name="import", passed=True, summary=_loaded_summary(plan, results), details=details)


def _loaded_summary(plan: Sequence[Load], results: Sequence[dict[str, Any]]) -> str:
    """ "import torch, then extension module canary._C; torch operator library xformers/_C.so (torch.ops.load_library:
    25 operators in xformers::)": what was loaded, and as what."""
    modules = [item.name for item in plan if item.kind == MODULE]
    libraries = []
    for item, result in zip(plan, results, strict=True):
        if item.kind != TORCH_LIBRARY:
            continue
        ops = result.get("operators")
        if ops is None:
            registered = ""
        elif ops:
            spaces = ", ".join(f"{ns}::" for ns in dict.fromkeys(op.split("::", 1)[0] for op in ops))
            registered = f": {len(ops)} operator{'s' if len(ops) != 1 else ''} in {spaces}"
        else:
            registered = ": no new operator names (kernels for existing ones only)"
        libraries.append(f"{item.name} (torch.ops.load_library{registered})")
    parts = []
    if modules:
        parts.append(f"{KINDS[MODULE] if len(modules) == 1 else PLURALS[MODULE]} {', '.join(modules)}")
    if libraries:
        kind = KINDS[TORCH_LIBRARY] if len(libraries) == 1 else PLURALS[TORCH_LIBRARY]
        parts.append(f"{kind} {', '.join(libraries)}")
    return f"import torch, then {'; '.join(parts)}"
