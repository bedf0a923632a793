"""The gate's pure checks on facts made here: symbol classification, C++11 ABI, CUDA, portability, integrity."""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from wheels.abi import checks
from wheels.abi.analysis import Linkage, Load, WheelFile
from wheels.abi.checks import TorchFacts, classify_unresolved, symbol_abi
from wheels.abi.demangle import demangle, demangle_all
from wheels.abi.elf import STB_GLOBAL, DynamicInfo, ElfFacts, Symbol, VersionNeed
from wheels.abi.fatbin import FATBIN_MAGIC, FLAG_ARCH_SPECIFIC, KIND_ELF
from wheels.abi.loader import Missing
from wheels.abi.model import Expectation
from wheels.abi.policy import load_policy
from wheels.options import TorchBuild

TORCH = TorchFacts("2.5.1+cu124", "12.4", False)
TORCH_CXX11 = TorchFacts("2.5.1+cu124", "12.4", True)

# Real mangled names: torch 2.5.1's c10::ReplaceAll in both ABIs, and one torch 2.6 added.
REPLACE_OLD = "_ZN3c1010ReplaceAllERSsNS_17basic_string_viewIcEES2_"
REPLACE_NEW = "_ZN3c1010ReplaceAllERNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEENS_17basic_string_viewIcEES8_"
GET_ENV = "_ZN3c105utils7get_envEPKc"


def sym(name: str, defined: bool = False, version: str | None = None, library: str | None = None) -> Symbol:
    return Symbol(name, defined, STB_GLOBAL, version, False, library)


def wheel_file(
    member: str = "pkg/_C.cpython-311-x86_64-linux-gnu.so",
    *,
    undefined: tuple[Symbol, ...] = (),
    defined: tuple[Symbol, ...] = (),
    needed: tuple[str, ...] = ("libc10.so", "libstdc++.so.6"),
    needs: tuple[VersionNeed, ...] = (),
    fatbin: bytes | None = None,
    module: str | None = "pkg._C",
) -> WheelFile:
    facts = ElfFacts(
        path=Path("/site") / member,
        dynamic=DynamicInfo(None, needed, (), (), 64, "EM_X86_64"),
        needs=needs,
        undefined=undefined,
        defined=defined,
        fatbin=fatbin,
    )
    return WheelFile(member, facts.path, facts, module)


def test_demangling_needs_no_program() -> None:
    assert demangle("_ZN3c105ErrorC2ENS_14SourceLocationESs") == "c10::Error::Error(c10::SourceLocation, std::string)"
    assert demangle("memcpy") == "memcpy"
    assert demangle_all(["_Znot_mangled!"]) == {"_Znot_mangled!": "_Znot_mangled!"}


@pytest.mark.parametrize(
    ("name", "abi"),
    [
        (REPLACE_NEW, "cxx11"),
        (REPLACE_OLD, "pre-cxx11"),
        ("_ZNSt7__cxx114listIiSaIiEE5clearEv", "cxx11"),  # std::__cxx11::list<int>::clear()
        ("_ZNSt4listIiSaIiEE5clearEv", "pre-cxx11"),  # std::list<int>::clear() (old ABI)
        ("_ZN3c1019UndefinedTensorImpl10_singletonE", None),
        ("_ZNSt17basic_string_viewIcSt11char_traitsIcEE4findEPKcm", None),  # string_view is ABI-neutral
    ],
)
def test_symbol_abi(name: str, abi: str | None) -> None:
    assert symbol_abi(demangle(name)) == abi


@pytest.mark.parametrize(
    ("ref", "torch", "cause"),
    [
        (sym(REPLACE_NEW), TORCH, "cxx11-abi"),  # a new-ABI symbol, torch is pre-cxx11
        (sym(REPLACE_OLD), TORCH_CXX11, "cxx11-abi"),  # and the reverse
        (sym(REPLACE_OLD), TORCH, "other-torch"),  # same ABI, still missing: another torch
        (sym(GET_ENV), TORCH, "other-torch"),
        (sym("_ZN2at4_ops3add4callERKNS_6TensorES4_RKN3c106ScalarE"), TORCH, "other-torch"),
        (sym("memfrob2", version="GLIBC_2.99", library="libc.so.6"), TORCH, "system-too-old"),
        (sym("cudaLaunchKernelExC"), TORCH, "cuda-runtime"),
        (sym("ext_func", version="V1", library="libext.so.1"), TORCH, "missing-library"),
        (sym("some_c_function"), TORCH, "unknown"),
    ],
)
def test_classify_unresolved(ref: Symbol, torch: TorchFacts, cause: str) -> None:
    assert classify_unresolved(ref, demangle(ref.name), torch, missing_libraries=["libext.so.1"]) == cause


def linkage(file: WheelFile, unresolved: list[Symbol], missing: list[Missing] | None = None) -> Linkage:
    return Linkage(file, [], missing or [], [], unresolved, [], checked=len(file.facts.undefined))


def test_check_symbols_names_each_symbol_demangled_with_its_cause() -> None:
    file = wheel_file(undefined=(sym(REPLACE_NEW), sym(GET_ENV), sym("_ZN3c104warnERKNS_7WarningE")))
    result = checks.check_symbols([linkage(file, [sym(REPLACE_NEW), sym(GET_ENV)])], TORCH)
    assert not result.passed
    text = "\n".join(result.problems)
    assert "c10::utils::get_env(char const*)" in text
    assert f"[{GET_ENV}]" in text  # the mangled name too: it is what `undefined symbol:` errors show
    assert "built against another torch: torch 2.5.1+cu124 does not define it" in text
    assert (
        "C++11 ABI differs: the extension was compiled with _GLIBCXX_USE_CXX11_ABI=1, torch 2.5.1+cu124 with "
        "_GLIBCXX_USE_CXX11_ABI=0" in text
    )
    assert result.summary == "2 unresolved at run time (cxx11-abi: 1, other-torch: 1)"
    assert result.cause and result.fix


def test_check_symbols_without_any_module_fails() -> None:
    result = checks.check_symbols([], TORCH)
    assert not result.passed and "no extension module, torch operator library" in result.summary


def op_library(member: str = "pkg/_C.so", **kw: object) -> WheelFile:
    """A torch operator library (xformers/_C.so): links torch, no PyInit_*, loaded by torch.ops.load_library."""
    file = wheel_file(member, module=None, needed=("libtorch_cpu.so", "libc10.so"), **kw)  # type: ignore[arg-type]
    return dataclasses.replace(file, links_torch=True)


def test_check_symbols_names_the_kind_it_checked() -> None:
    library = op_library(undefined=(sym(REPLACE_OLD),))
    assert library.kind == "torch-library"
    result = checks.check_symbols([linkage(library, [])], TORCH)
    assert result.passed
    assert result.summary.startswith("1 undefined symbols of 1 torch operator library resolve against torch")
    assert result.details["pkg/_C.so"]["kind"] == "torch-library"
    both = checks.check_symbols([linkage(wheel_file(), []), linkage(library, [])], TORCH)
    assert "of 2 shared objects (1 extension module, 1 torch operator library) resolve" in both.summary


def test_check_symbols_fails_an_operator_library_with_a_symbol_torch_lacks() -> None:
    library = op_library(undefined=(sym(GET_ENV),))
    result = checks.check_symbols([linkage(library, [sym(GET_ENV)])], TORCH)
    assert not result.passed
    assert result.problems == [
        f"pkg/_C.so: undefined symbol c10::utils::get_env(char const*) [{GET_ENV}]: built against another torch: "
        "torch 2.5.1+cu124 does not define it"
    ]


def test_check_symbols_names_the_loader_of_a_library() -> None:
    helper = wheel_file("pkg/libhelper.so", module=None, undefined=(sym("nowhere"),))
    link = dataclasses.replace(linkage(helper, [sym("nowhere")]), via="pkg/_C.cpython-311-x86_64-linux-gnu.so")
    result = checks.check_symbols([link], TORCH)
    assert result.problems[0].startswith(
        "pkg/libhelper.so (loaded by pkg/_C.cpython-311-x86_64-linux-gnu.so): undefined symbol nowhere: "
    )


def test_check_symbols_reports_missing_libraries_but_not_the_driver() -> None:
    file = wheel_file(undefined=(sym("f"),))
    missing = [Missing("libfoo.so.2", file.path, ()), Missing("libcuda.so.1", file.path, ())]
    result = checks.check_symbols([linkage(file, [], missing)], TORCH)
    assert not result.passed
    [problem] = result.problems
    assert "needs libfoo.so.2" in problem and "found nowhere" in problem
    ok = checks.check_symbols([linkage(file, [], missing[1:])], TORCH)
    assert ok.passed
    assert "resolve against torch 2.5.1+cu124" in ok.summary


@pytest.mark.parametrize(
    ("names", "torch", "passed", "phrase"),
    [
        ([REPLACE_OLD], TORCH, True, "pre-C++11 ABI, like torch"),
        ([REPLACE_NEW], TORCH, False, "uses the C++11 ABI"),
        ([REPLACE_OLD], TORCH_CXX11, False, "uses the old C++ ABI"),
        ([REPLACE_NEW], TORCH_CXX11, True, "C++11 ABI, like torch"),
        ([REPLACE_OLD, REPLACE_NEW], TORCH, False, "mixes both ABIs"),
        (["_ZN3c104warnERKNS_7WarningE"], TORCH, True, "nothing ABI-specific"),
    ],
)
def test_check_cxx11_abi(names: list[str], torch: TorchFacts, passed: bool, phrase: str) -> None:
    file = wheel_file(undefined=tuple(sym(n) for n in names), defined=(sym("PyInit__C", defined=True),))
    result = checks.check_cxx11_abi([file], torch)
    assert result.passed == passed
    assert phrase in (result.summary + "\n".join(result.problems))
    if not passed:
        assert "C++11 ABI differs" in (result.cause or "")


def test_check_cxx11_abi_judges_operator_libraries_and_records_other_libraries() -> None:
    new_abi = (sym(REPLACE_NEW),)
    library = op_library(undefined=new_abi)
    result = checks.check_cxx11_abi([library], TORCH)
    assert not result.passed
    assert result.problems[0].startswith("pkg/_C.so uses the C++11 ABI")
    # A library that does not link torch passes it no std type: recorded, not judged.
    vendored = wheel_file("pkg.libs/libyaml-cpp.so", module=None, needed=("libstdc++.so.6",), undefined=new_abi)
    result = checks.check_cxx11_abi([vendored], TORCH)
    assert result.passed
    assert result.details["pkg.libs/libyaml-cpp.so"] == {
        "kind": "library",
        "abi": "cxx11",
        "cxx11_symbols": 1,
        "pre_cxx11_symbols": 0,
        "compared_with_torch": False,
    }


def fatbin_with(*archs: int | str) -> bytes:
    """One container of tiny cubins; "90a" is written as nvcc writes arch-specific code (arch 90, flag 0x100000)."""
    import struct

    body = b""
    for spec in archs:
        arch, flags = int(str(spec).rstrip("a")), 0x11 | (FLAG_ARCH_SPECIFIC if str(spec).endswith("a") else 0)
        head = struct.pack("<HHIQIIHHIIIQ", KIND_ELF, 0x0101, 72, 8, 8, 0, 7, 1, arch, 0, 0, flags)
        body += head + b"\0" * (72 - len(head)) + b"\x7fELF\0\0\0\0"
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def test_check_cuda_passes_when_every_arch_has_sass() -> None:
    file = wheel_file(needed=("libcudart.so.12",), fatbin=fatbin_with(80, 90))
    result = checks.check_cuda([file], TORCH, ("8.0", "8.6", "9.0"))
    assert result.passed, result.problems
    assert result.summary == "links libcudart.so.12 (torch: CUDA 12.4); device code sm_80, sm_90 covers 8.0;8.6;9.0"


def test_check_cuda_takes_sm_90a_for_a_90_target() -> None:
    """The arch list of upstream's xformers 0.0.29.post1 (TORCH_CUDA_ARCH_LIST "6.0+PTX 7.0 7.5 8.0+PTX 9.0a")."""
    file = op_library("xformers/_C.so", fatbin=fatbin_with(60, 70, 75, 80, "90a"))
    result = checks.check_cuda([file], TORCH, ("8.0", "8.6", "8.9", "9.0"))
    assert result.passed, result.problems
    assert result.summary.endswith(
        "device code sm_60, sm_70, sm_75, sm_80, sm_90a covers 8.0;8.6;8.9;9.0 (9.0 by sm_90a: arch-specific code "
        "runs on exactly its compute capability)"
    )
    assert result.details["xformers/_C.so"]["runs"] == {"8.0": "sm_80", "8.6": "sm_80", "8.9": "sm_80", "9.0": "sm_90a"}
    later = checks.check_cuda([file], TORCH, ("9.0", "10.0"))
    assert not later.passed
    assert "no SASS for sm_100" in later.problems[0]


def test_check_cuda_names_the_missing_arch() -> None:
    file = wheel_file(needed=("libcudart.so.12",), fatbin=fatbin_with(80))
    result = checks.check_cuda([file], TORCH, ("8.0", "9.0"))
    assert not result.passed
    [problem] = result.problems
    assert "no SASS for sm_90" in problem and "no kernel image is available" in problem
    assert result.fix == 'rebuild with the target\'s arch list, --cuda-archs "8.0;9.0" (missing: 9.0)'


def test_check_cuda_runtime_major_must_match_torch() -> None:
    file = wheel_file(needed=("libcudart.so.11.0",), fatbin=fatbin_with(80))
    result = checks.check_cuda([file], TORCH, ("8.0",))
    assert not result.passed
    assert "links libcudart.so.11.0 (the CUDA 11 runtime)" in result.problems[0]
    assert result.fix and "CUDA 12.4 toolkit" in result.fix
    cpu = checks.check_cuda([wheel_file(needed=("libcudart.so.12",))], TorchFacts("2.5.1+cpu", None, False), ())
    assert not cpu.passed and "CPU build" in cpu.problems[0]


def test_check_cuda_without_any_device_code() -> None:
    result = checks.check_cuda([wheel_file()], TORCH, ("9.0",))
    assert not result.passed
    assert "no file of the wheel carries device code" in result.problems[0]
    assert checks.check_cuda([wheel_file()], TORCH, ()).passed  # nothing asked for: nothing missing


def test_check_cuda_unparsable_device_code() -> None:
    result = checks.check_cuda([wheel_file(fatbin=b"\xff" * 32)], TORCH, ("9.0",))
    assert not result.passed and "does not parse" in result.problems[0]


NEEDS_BOOKWORM = (
    VersionNeed("libc.so.6", "GLIBC_2.2.5"),
    VersionNeed("libc.so.6", "GLIBC_2.32"),
    VersionNeed("libstdc++.so.6", "GLIBCXX_3.4.29"),
    VersionNeed("libstdc++.so.6", "CXXABI_1.3.13"),
    VersionNeed("libgcc_s.so.1", "GCC_3.0"),
)


def test_portability_fits_and_computes_the_tag() -> None:
    policy = load_policy()
    base = policy.bases["ubuntu-22.04"]
    result, tag = checks.check_portability([wheel_file(needs=NEEDS_BOOKWORM)], base, policy, ["manylinux_2_34_x86_64"])
    assert result.passed, result.problems
    assert tag == "manylinux_2_34_x86_64"  # GLIBCXX_3.4.29 needs 2_34, as auditwheel says
    assert result.details["highest"]["glibc"]["version"] == "GLIBC_2.32"


def test_portability_fails_on_an_older_base() -> None:
    policy = load_policy()
    result, _ = checks.check_portability(
        [wheel_file(needs=NEEDS_BOOKWORM)], policy.bases["ubuntu-20.04"], policy, ["linux_x86_64"]
    )
    assert not result.passed
    text = "\n".join(result.problems)
    assert "needs GLIBC_2.32 (from libc.so.6), but ubuntu-20.04 provides GLIBC versions up to 2.31" in text
    assert "GLIBCXX_3.4.29" in text and "CXXABI_1.3.13" in text
    assert "version `GLIBC_2.32' not found" in text


def test_portability_catches_a_platform_tag_that_promises_too_much() -> None:
    policy = load_policy()
    result, tag = checks.check_portability(
        [wheel_file(needs=NEEDS_BOOKWORM)], policy.bases["ubuntu-22.04"], policy, ["manylinux_2_28_x86_64"]
    )
    assert tag == "manylinux_2_34_x86_64"
    assert not result.passed
    assert "manylinux_2_28_x86_64 promises glibc 2.28" in result.problems[0]


def test_portability_private_and_special_versions() -> None:
    policy = load_policy()
    needs = (VersionNeed("libc.so.6", "GLIBC_PRIVATE"), VersionNeed("libc.so.6", "GLIBC_ABI_DT_RELR"))
    result, tag = checks.check_portability([wheel_file(needs=needs)], policy.bases["ubuntu-22.04"], policy, [])
    assert tag == "manylinux_2_36_x86_64"  # DT_RELR needs glibc 2.36
    text = "\n".join(result.problems)
    assert "GLIBC_PRIVATE" in text and "private interface" in text
    assert "GLIBC_ABI_DT_RELR" in text  # 2.36 > ubuntu 22.04's 2.35


# ---------------------------------------------------------------------------------------------------------------------
# Integrity, on wheels written here


def write_wheel(folder: Path, filename: str, files: dict[str, bytes], meta_version: str | None = None) -> Path:
    name, version = filename.split("-")[:2]
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {meta_version or version}\n".encode()
    content = {**files, f"{info}/METADATA": meta, f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"}
    rows = []
    path = folder / filename
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in content.items():
            zf.writestr(member, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append([member, f"sha256={digest}", str(len(data))])
        rows.append([f"{info}/RECORD", "", ""])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        zf.writestr(f"{info}/RECORD", buf.getvalue())
    return path


EXPECT = Expectation(
    package="pkg",
    version="0.1.0",
    torch=TorchBuild("cu124", "index", "2.5.1", "12.4", "https://pypi.org/simple"),
    python="3.11",
    cuda_archs=(),
    extension_modules=("pkg._C",),
)
TORCH_RECORD = {"version": "2.5.1+cu124", "cuda": "12.4", "cxx11_abi": False, "python_tag": "cp311"}
NAME = "pkg-0.1.0+cu124torch2.5-cp311-cp311-linux_x86_64.whl"
MODULE = {"pkg/__init__.py": b"", "pkg/_C.cpython-311-x86_64-linux-gnu.so": b"\x7fELF"}


def test_integrity_passes_a_consistent_wheel(tmp_path: Path) -> None:
    result = checks.check_integrity(write_wheel(tmp_path, NAME, MODULE), EXPECT, TORCH_RECORD)
    assert result.passed, result.problems


def test_integrity_metadata_version_disagrees_with_file_name(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path, NAME, MODULE, meta_version="0.1.1+cu124torch2.5")
    result = checks.check_integrity(wheel, EXPECT, TORCH_RECORD)
    assert not result.passed
    assert result.problems == [
        "METADATA Version 0.1.1+cu124torch2.5 disagrees with the file name's version 0.1.0+cu124torch2.5"
    ]
    assert "file name" in (result.cause or "")


def test_integrity_label_of_another_torch(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path, NAME, MODULE)
    torch26 = {**TORCH_RECORD, "version": "2.6.0+cu124"}
    result = checks.check_integrity(wheel, EXPECT, torch26)
    assert not result.passed
    assert "built for torch 2.5, checked against torch 2.6.0+cu124" in result.problems[0]
    assert result.cause == "built for another torch than the one it is checked against"
    assert result.fix is not None and "--torch BUILD" in result.fix


def test_integrity_missing_module_and_record_tampering(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path, NAME, {"pkg/__init__.py": b""})
    result = checks.check_integrity(wheel, EXPECT, TORCH_RECORD)
    assert result.problems == ["the wheel has no file for extension module pkg._C"]
    tampered = tmp_path / "t" / NAME
    tampered.parent.mkdir()
    with zipfile.ZipFile(write_wheel(tmp_path, NAME, MODULE)) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, b"changed" if item.filename == "pkg/__init__.py" else data)
    result = checks.check_integrity(tampered, EXPECT, TORCH_RECORD)
    assert result.problems == ["pkg/__init__.py: hash does not match RECORD"]


# ---------------------------------------------------------------------------------------------------------------------
# Import: the probe's results, as a verdict

MODULE_LOAD = Load("module", "pkg._C")
LIBRARY_LOAD = Load("torch-library", "xformers/_C.so", "/site/xformers/_C.so")


def test_loaded_names_each_kind_and_what_an_operator_library_registers() -> None:
    ok = {"error": None, "operators": None}
    ops = {"error": None, "operators": ["xformers::swiglu_packedw", "xformers::efficient_attention_forward_cutlass"]}
    result = checks.check_loaded([MODULE_LOAD, LIBRARY_LOAD], [ok, ops], "")
    assert result.passed
    assert result.summary == (
        "import torch, then extension module pkg._C; torch operator library xformers/_C.so "
        "(torch.ops.load_library: 2 operators in xformers::)"
    )
    assert result.details["xformers/_C.so"]["kind"] == "torch-library"
    kernels_only = checks.check_loaded([LIBRARY_LOAD], [{"error": None, "operators": []}], "")
    assert "no new operator names (kernels for existing ones only)" in kernels_only.summary


def test_loaded_failure_names_the_statement_and_the_symbol() -> None:
    err = f"OSError: /site/xformers/_C.so: undefined symbol: {GET_ENV}"
    result = checks.check_loaded([LIBRARY_LOAD], [{"error": err, "operators": None}], "")
    assert not result.passed
    assert result.problems == [
        f"torch.ops.load_library('xformers/_C.so') failed: {err} (c10::utils::get_env(char const*))"
    ]
    died = checks.check_loaded([MODULE_LOAD, LIBRARY_LOAD], None, "the loading process died (signal 11): ")
    assert died.problems == [
        "import torch; import pkg._C; torch.ops.load_library('xformers/_C.so'): the loading process died (signal 11): "
    ]
    nothing = checks.check_loaded([], [], "")
    assert (
        not nothing.passed
        and nothing.summary == "the wheel holds no extension module or torch operator library to load"
    )
