"""The ABI gate, for real: `python -m wheels abi` in fresh environments (torch 2.5.1 from PyPI, the CUDA 12.4 build).

The good canary passes; each broken wheel fails with its own message: the other C++11 ABI, a torch symbol torch 2.5.1
does not have, METADATA disagreeing with the file name, a missing arch, and a wheel checked against another torch
(torch 2.6.0: PyPI's other CUDA 12.4 build, which shares torch 2.5.1's nvidia-* pins, so uv's cache serves most of it).
Torch operator libraries (TORCH_LIBRARY, no PyInit_*) are checked and loaded as their packages load them: a g++-built
one, good and broken, and upstream's xformers 0.0.29.post1 wheel (its _C.so is one; sm_90a is its only 9.0 code).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wheels.abi import elf, fatbin
from wheels.envs import CONSTRAINTS
from wheels.options import DEFAULT_MATRIX
from wheels.toolchain import Toolchains
from wheels.util import uv_bin

sys.path.insert(0, str(Path(__file__).parent))  # works whether or not tests/ is a package

from abi_helpers import (  # noqa: E402
    EXT_SUFFIX,
    TorchTree,
    compile_cuda_probe,
    compile_object,
    compile_ops,
    compile_probe,
    write_wheel,
)
from canary_helpers import CANARY_TARGET, Build, pipeline_env, run_wheels  # noqa: E402

pytestmark = pytest.mark.integration

GATE_FAILED = 9  # errors.GateError.exit_code


@pytest.fixture(scope="session")
def canary(canary_build: Build) -> Path:
    """A wheelhouse holding the canary: the session's one build (`python -m wheels build canary-cu124`, gated once)."""
    return Path(canary_build.wheelhouse)


@pytest.fixture(scope="session")
def torch_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchTree]:
    """torch 2.5.1 (its headers and libc10.so) to compile the probes against; from uv's cache, seconds."""
    root = tmp_path_factory.mktemp("probe-torch")
    venv = root / "venv"
    subprocess.run([uv_bin(), "venv", "--quiet", "--python", "3.11", str(venv)], check=True)
    subprocess.run(
        [uv_bin(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--constraint",
         str(CONSTRAINTS), "torch==2.5.1"],
        check=True,
    )  # fmt: skip
    site = next((venv / "lib").glob("python3.*/site-packages"))
    yield TorchTree(site)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def probes(torch_tree: TorchTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The g++ wheels: one good, and three each broken in one way."""
    root = tmp_path_factory.mktemp("probes")
    good = compile_probe(torch_tree, root / "good" / "_C.so", "abiprobe_good")
    cxx11 = compile_probe(torch_tree, root / "cxx11" / "_C.so", "abiprobe_cxx11", cxx11_abi=True)
    newer = compile_probe(torch_tree, root / "torch26" / "_C.so", "abiprobe_torch26", torch26=True)
    return {
        "good": write_wheel(root / "good" / "dist", "abiprobe_good", good),
        "cxx11": write_wheel(root / "cxx11" / "dist", "abiprobe_cxx11", cxx11),
        "torch26": write_wheel(root / "torch26" / "dist", "abiprobe_torch26", newer),
        "metadata": write_wheel(
            root / "metadata" / "dist", "abiprobe_good", good, metadata_version="0.1.1+cu124torch2.5"
        ),
        # Like mmcv, whose __init__ imports mmengine: the gate installs the wheel alone, without dependencies.
        "pure_deps": write_wheel(
            root / "pure_deps" / "dist", "abiprobe_good", good, init="import a_pure_python_dependency_not_installed\n"
        ),
    }


@pytest.fixture(scope="session")
def toolchain(wheels_cache: Path) -> Toolchains:
    return Toolchains(wheels_cache, pipeline_env())


@pytest.fixture(scope="session")
def nvcc(toolchain: Toolchains) -> Path:
    """The pipeline's CUDA 12.4 nvcc (provisioned into the cache unless the canary build already did)."""
    return toolchain.get("12.4").tool("nvcc")


def gate(*args: str | Path) -> tuple[subprocess.CompletedProcess, dict[str, dict[str, Any]]]:
    """`python -m wheels abi ARGS --json`: the process, and each wheel's checks by name."""
    started = time.monotonic()
    result = run_wheels("abi", *args, "--json")
    print(f"gate took {time.monotonic() - started:.1f}s:\n{result.stderr[-6000:]}")  # shown when a test fails
    reports = json.loads(result.stdout) if result.stdout.strip() else []
    assert len(reports) == 1, result.stderr[-4000:]
    return result, {c["name"]: c for c in reports[0]["checks"]}


def failed(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, c in checks.items() if not c["passed"]}


# ---------------------------------------------------------------------------------------------------------------------
# The good ones pass


def test_canary_passes_and_its_record_is_updated(canary: Path) -> None:
    manifest = canary / "manifest.json"
    before = json.loads(manifest.read_text())["records"][CANARY_TARGET]
    assert before["gate"]["platform_tag"] == "manylinux_2_34_x86_64"  # the build's own gate recorded it
    result = run_wheels("abi", "--wheelhouse", canary)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "PASS" in result.stderr
    for check in ("integrity", "install", "symbols", "cxx11_abi", "cuda", "portability", "import"):
        assert f"[ok] {check}:" in result.stderr
    assert "device code sm_80, sm_90 covers 8.0;9.0" in result.stderr
    record = json.loads(manifest.read_text())["records"][CANARY_TARGET]
    assert record["gate"]["verdict"] == "pass"
    assert record["gate"]["platform_tag"] == "manylinux_2_34_x86_64"  # what auditwheel chose, computed again
    assert record["gate"]["checked_at"] >= before["gate"]["checked_at"]
    report = json.loads((canary / record["gate"]["report"]).read_text())
    assert report["verdict"] == "pass"
    assert report["expectation"]["torch_build"] == "cu124"
    print(f"gate of the canary: {report['seconds']}s, phases {report['timings']}")


def test_good_probe_passes(probes: dict[str, Path]) -> None:
    """The baseline of the g++ wheels: each failure below is its own defect, not the probe's."""
    result, checks = gate(probes["good"])
    assert result.returncode == 0, result.stderr[-6000:]
    assert not failed(checks)
    assert "pre-C++11 ABI, like torch" in checks["cxx11_abi"]["summary"]
    assert checks["import"]["summary"] == "import torch, then extension module abiprobe_good._C"  # no recipe


def test_extension_is_checked_without_its_packages_pure_python_dependencies(probes: dict[str, Path]) -> None:
    """The gate loads the extension by its file: a package __init__ that needs an uninstalled pure-Python dependency
    (mmcv's needs mmengine) does not fail a good extension. Found on the H200, where mmcv's gate failed this way."""
    result, checks = gate(probes["pure_deps"])
    assert result.returncode == 0, result.stderr[-6000:]
    assert not failed(checks)
    assert checks["import"]["summary"] == "import torch, then extension module abiprobe_good._C"


# ---------------------------------------------------------------------------------------------------------------------
# Each broken one fails with its own message


def test_built_with_the_other_cxx11_abi(probes: dict[str, Path]) -> None:
    result, checks = gate(probes["cxx11"])
    assert result.returncode == GATE_FAILED
    assert failed(checks) == {"symbols", "cxx11_abi", "import"}
    symbols = "\n".join(checks["symbols"]["problems"])
    assert "undefined symbol c10::ReplaceAll(std::__cxx11::basic_string<char" in symbols
    assert (
        "C++11 ABI differs: the extension was compiled with _GLIBCXX_USE_CXX11_ABI=1, torch 2.5.1+cu124 with "
        "_GLIBCXX_USE_CXX11_ABI=0" in symbols
    )
    assert "uses the C++11 ABI" in checks["cxx11_abi"]["problems"][0]
    assert "undefined symbol: _ZN3c1010ReplaceAllERNSt7__cxx11" in checks["import"]["problems"][0]
    assert "likely cause: C++11 ABI differs" in result.stderr


def test_references_a_symbol_torch_251_does_not_have(probes: dict[str, Path]) -> None:
    result, checks = gate(probes["torch26"])
    assert result.returncode == GATE_FAILED
    assert failed(checks) == {"symbols", "import"}
    [problem] = checks["symbols"]["problems"]
    assert "undefined symbol c10::utils::get_env(char const*) [_ZN3c105utils7get_envEPKc]" in problem
    assert "built against another torch: torch 2.5.1+cu124 does not define it" in problem


def test_metadata_version_disagrees_with_file_name(probes: dict[str, Path]) -> None:
    result, checks = gate(probes["metadata"])
    assert result.returncode == GATE_FAILED
    assert failed(checks) == {"integrity", "install"}
    assert checks["integrity"]["problems"] == [
        "METADATA Version 0.1.1+cu124torch2.5 disagrees with the file name's version 0.1.0+cu124torch2.5"
    ]
    assert "does not match filename" in " ".join(checks["install"]["problems"])  # uv refuses it too


def test_missing_a_requested_arch(nvcc: Path, torch_tree: TorchTree, tmp_path: Path) -> None:
    module = compile_cuda_probe(nvcc, torch_tree.cudart, tmp_path / "_C.so", "abiprobe_arch",
                                ["-gencode", "arch=compute_80,code=sm_80"])  # fmt: skip
    wheel = write_wheel(tmp_path / "dist", "abiprobe_arch", module)
    result, checks = gate(wheel, "--cuda-archs", "8.0;9.0")
    assert result.returncode == GATE_FAILED
    assert failed(checks) == {"cuda"}
    [problem] = checks["cuda"]["problems"]
    assert problem == (
        f"abiprobe_arch/_C{EXT_SUFFIX}: no SASS for sm_90: it carries sm_80; on sm_90 GPUs (H100, H200, GH200) its "
        'kernels fail with "CUDA error: no kernel image is available for execution on the device"'
    )
    assert checks["cuda"]["fix"] == 'rebuild with the target\'s arch list, --cuda-archs "8.0;9.0" (missing: 9.0)'


@pytest.fixture(scope="session")
def next_torch_matrix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The matrix plus torch 2.6.0 from PyPI (CUDA 12.4): the cheapest other torch reachable here."""
    path = tmp_path_factory.mktemp("matrix") / "matrix.toml"
    path.write_text(
        DEFAULT_MATRIX.read_text()
        + '\n[torch.cu124-torch26]\nversion = "2.6.0"\ncuda = "12.4"\nindex-url = "https://pypi.org/simple"\n'
    )
    return path


def test_checked_against_another_torch(probes: dict[str, Path], next_torch_matrix: Path) -> None:
    started = time.monotonic()
    result, checks = gate(probes["good"], "--matrix", next_torch_matrix, "--torch", "cu124-torch26")
    print(f"checked against torch 2.6.0 in {time.monotonic() - started:.1f}s")
    assert result.returncode == GATE_FAILED
    assert failed(checks) == {"integrity", "symbols", "import"}
    assert "built for torch 2.5, checked against torch 2.6.0+cu124" in checks["integrity"]["problems"][0]
    [problem] = checks["symbols"]["problems"]
    # torch 2.6 changed c10::ReplaceAll to take std::string_view: the 2.5 signature is gone.
    assert "c10::ReplaceAll(std::string&, c10::basic_string_view<char>, c10::basic_string_view<char>)" in problem
    assert "built against another torch: torch 2.6.0+cu124 does not define it" in problem
    reports = probes["good"].parent / "reports"
    report = json.loads((reports / f"{probes['good'].name}.abi.cu124-torch26.json").read_text())
    assert report["torch"]["version"] == "2.6.0+cu124"


# ---------------------------------------------------------------------------------------------------------------------
# Torch operator libraries: no PyInit_*, loaded with torch.ops.load_library


@pytest.fixture(scope="session")
def op_libraries(torch_tree: TorchTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wheels holding abiprobe_ops/_C.so, named as xformers names its own: one good, one calling a torch 2.6 symbol."""
    root = tmp_path_factory.mktemp("ops")
    builds = {
        name: compile_ops(torch_tree, root / name / "_C.so", torch26=name == "torch26") for name in ("good", "torch26")
    }
    wheels = {}
    for name, proc in builds.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"g++ of the {name} operator library failed:\n{out[-4000:]}"
        wheels[name] = write_wheel(root / name / "dist", "abiprobe_ops", root / name / "_C.so", filename="_C.so")
    return wheels


def test_torch_operator_library_passes(op_libraries: dict[str, Path]) -> None:
    result, checks = gate(op_libraries["good"])
    assert result.returncode == 0, result.stderr[-6000:]
    assert not failed(checks)
    assert (
        " undefined symbols of 1 torch operator library resolve against torch 2.5.1+cu124"
        in checks["symbols"]["summary"]
    )
    assert "pre-C++11 ABI, like torch" in checks["cxx11_abi"]["summary"]
    assert checks["import"]["summary"] == (
        "import torch, then torch operator library abiprobe_ops/_C.so (torch.ops.load_library: 1 operator in "
        "abiprobe_ops::)"
    )
    assert checks["import"]["details"]["abiprobe_ops/_C.so"]["operators"] == ["abiprobe_ops::twice"]


def test_torch_operator_library_with_a_symbol_torch_251_does_not_have(op_libraries: dict[str, Path]) -> None:
    result, checks = gate(op_libraries["torch26"])
    assert result.returncode == GATE_FAILED
    assert failed(checks) == {"symbols", "import"}
    [problem] = checks["symbols"]["problems"]
    assert problem.startswith(
        "abiprobe_ops/_C.so: undefined symbol c10::utils::get_env(char const*) [_ZN3c105utils7get_envEPKc]"
    )
    assert "built against another torch: torch 2.5.1+cu124 does not define it" in problem
    [failure] = checks["import"]["problems"]
    assert failure.startswith("torch.ops.load_library('abiprobe_ops/_C.so') failed: OSError: ")
    assert "undefined symbol: _ZN3c105utils7get_envEPKc" in failure
    assert "likely cause: built against another torch: torch 2.5.1+cu124 does not define it" in result.stderr


XFORMERS_TARGET = "xformers-cu124"
XFORMERS_WHEEL = "xformers-0.0.29.post1-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_upstream_xformers_wheel_passes_and_is_recorded(wheels_cache: Path, tmp_path: Path) -> None:
    """The prebuilt recipe end to end: fetch the pinned 15 MB wheel from PyPI, gate it against torch 2.5.1+cu124,
    record it. Its _C.so is a torch operator library, and sm_90a its only code for 9.0 GPUs."""
    wheelhouse = tmp_path / "wheelhouse"
    started = time.monotonic()
    result = run_wheels("build", XFORMERS_TARGET, "--wheelhouse", wheelhouse, "--cache-dir", wheels_cache)
    print(f"{XFORMERS_TARGET} took {time.monotonic() - started:.1f}s:\n{result.stderr[-6000:]}")
    assert result.returncode == 0, result.stderr[-6000:]
    assert f"ABI gate: {XFORMERS_WHEEL} against torch 2.5.1+cu124: PASS" in result.stderr
    for check in ("integrity", "install", "symbols", "cxx11_abi", "cuda", "portability", "import"):
        assert f"[ok] {check}:" in result.stderr
    assert "undefined symbols of 1 torch operator library resolve against torch 2.5.1+cu124" in result.stderr
    assert "covers 8.0;8.6;8.9;9.0 (9.0 by sm_90a: " in result.stderr
    assert re.search(
        r"\[ok\] import: import torch, then torch operator library xformers/_C\.so \(torch\.ops\.load_library: "
        r"\d+ operators in xformers::\)",
        result.stderr,
    )
    record = json.loads((wheelhouse / "manifest.json").read_text())["records"][XFORMERS_TARGET]
    assert record["filename"] == XFORMERS_WHEEL
    assert record["gate"]["verdict"] == "pass"
    assert (wheelhouse / XFORMERS_WHEEL).is_file()
    report = json.loads((wheelhouse / record["gate"]["report"]).read_text())
    imported = next(c for c in report["checks"] if c["name"] == "import")
    assert imported["details"]["xformers/_C.so"]["kind"] == "torch-library"
    cuda = next(c for c in report["checks"] if c["name"] == "cuda")
    assert cuda["details"]["xformers/_C.so"]["runs"]["9.0"] == "sm_90a"


# ---------------------------------------------------------------------------------------------------------------------
# The fatbin parser agrees with cuobjdump


def _cuobjdump(tool: Path, path: Path) -> tuple[set[str], set[str]]:
    elf_out = subprocess.run([str(tool), "--list-elf", str(path)], capture_output=True, text=True).stdout
    ptx_out = subprocess.run([str(tool), "--list-ptx", str(path)], capture_output=True, text=True).stdout
    return set(re.findall(r"\.sm_(\w+)\.cubin", elf_out)), set(re.findall(r"\.sm_(\w+)\.ptx", ptx_out))


def test_fatbin_parser_agrees_with_cuobjdump(nvcc: Path, toolchain: Toolchains, canary: Path, tmp_path: Path) -> None:
    cuobjdump = toolchain.get("12.4").tool("cuobjdump")
    gencode = [
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_86,code=sm_86",
        "-gencode", "arch=compute_90a,code=sm_90a",
        "-gencode", "arch=compute_90,code=compute_90",
        "-gencode", "arch=compute_80,code=compute_80",
    ]  # fmt: skip
    plain = compile_object(nvcc, tmp_path / "plain.o", gencode)
    packed = compile_object(nvcc, tmp_path / "packed.o", [*gencode, "-Xfatbin", "-compress-all"])
    with zipfile.ZipFile(next(canary.glob("canary-*.whl"))) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".so"))
        extension = Path(zf.extract(member, tmp_path / "canary"))
    for path in (plain, packed, extension):
        code = fatbin.device_code(elf.read_facts(path).fatbin)
        assert (set(code.sass), set(code.ptx)) == _cuobjdump(cuobjdump, path), path
    assert set(fatbin.device_code(elf.read_facts(plain).fatbin).sass) == {"80", "86", "90a"}
