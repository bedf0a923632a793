"""Small, deliberately broken wheels for the ABI gate's integration tests, built in seconds.

Each is a real torch extension module compiled with g++ against torch 2.5.1's headers (only the c10 header it needs,
not torch/extension.h) and Python's C API, or, for the arch case, with the pipeline's CUDA 12.4 nvcc; or a torch
operator library like xformers/_C.so (TORCH_LIBRARY, no PyInit_*), which the package loads with
torch.ops.load_library. The wheels are written by hand (METADATA, WHEEL, RECORD), so a test can make exactly one thing
wrong.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")  # ".cpython-311-x86_64-linux-gnu.so"
LABEL = "cu124torch2.5"  # what torch 2.5.1 from PyPI (CUDA 12.4, pre-C++11 ABI) labels a wheel

# One c10 call (c10::ReplaceAll takes std::string&: ABI-sensitive, and its signature changed in torch 2.6) and a
# Python module written by hand. ABIPROBE_TORCH26 adds a call torch 2.6 has and torch 2.5.1 does not.
PROBE_CPP = r"""
#include <Python.h>
#include <optional>
#include <string>
#include <c10/util/StringUtil.h>

#ifdef ABIPROBE_TORCH26
// Declared as in torch 2.6's c10/util/env.h; torch 2.5.1 has no such function.
namespace c10::utils { std::optional<std::string> get_env(const char* name) noexcept; }
#endif

static PyObject* replace(PyObject*, PyObject*) {
  std::string s = "a-b";
  c10::ReplaceAll(s, "-", "+");
#ifdef ABIPROBE_TORCH26
  if (c10::utils::get_env("ABIPROBE")) s += "!";
#endif
  return PyUnicode_FromString(s.c_str());
}

static PyMethodDef methods[] = {{"replace", replace, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef module = {PyModuleDef_HEAD_INIT, MODULE_NAME, nullptr, -1, methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
"""

# A torch operator library: one operator, registered the way xformers registers its own (TORCH_LIBRARY), and no
# Python module. ABIPROBE_TORCH26 adds a call torch 2.6 has and torch 2.5.1 does not.
OPS_CPP = r"""
#include <optional>
#include <string>
#include <torch/library.h>

#ifdef ABIPROBE_TORCH26
namespace c10::utils { std::optional<std::string> get_env(const char* name) noexcept; }
#endif

static at::Tensor twice(const at::Tensor& x) {
#ifdef ABIPROBE_TORCH26
  if (c10::utils::get_env("ABIPROBE")) return x;
#endif
  return x.add(x);
}

TORCH_LIBRARY(abiprobe_ops, m) { m.def("twice(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(abiprobe_ops, CompositeExplicitAutograd, m) { m.impl("twice", &twice); }
"""

# A CUDA kernel and its launcher (the runtime only, no torch): the arch case.
KERNEL_CU = r"""
#include <cuda_runtime.h>
__global__ void twice(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= 2.f;
}
extern "C" int abiprobe_launch(float* x, int n) {
  twice<<<(n + 255) / 256, 256>>>(x, n);
  return static_cast<int>(cudaGetLastError());
}
"""
BINDING_CPP = r"""
#include <Python.h>
extern "C" int abiprobe_launch(float* x, int n);
static PyObject* launch(PyObject*, PyObject*) { return PyLong_FromLong(abiprobe_launch(nullptr, 0)); }
static PyMethodDef methods[] = {{"launch", launch, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef module = {PyModuleDef_HEAD_INIT, MODULE_NAME, nullptr, -1, methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
"""


@dataclasses.dataclass(frozen=True)
class TorchTree:
    """Where torch 2.5.1's headers and libraries are (a venv made for the tests)."""

    site: Path

    @property
    def include(self) -> Path:
        return self.site / "torch" / "include"

    @property
    def lib(self) -> Path:
        return self.site / "torch" / "lib"

    @property
    def cudart(self) -> Path:
        return self.site / "nvidia" / "cuda_runtime" / "lib"


def python_include() -> Path:
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").exists():
        raise RuntimeError(f"Python.h is not in {include}: install the Python headers (Debian: python3-dev)")
    return include


def compile_probe(torch: TorchTree, out: Path, package: str, *, cxx11_abi: bool = False, torch26: bool = False) -> Path:
    """g++ one translation unit into ``out``; about 2 s."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / "probe.cpp"
    src.write_text(PROBE_CPP)
    cmd = [
        "g++", "-shared", "-fPIC", "-O1", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={int(cxx11_abi)}",
        f'-DMODULE_NAME="{package}._C"', f"-I{torch.include}", f"-I{python_include()}", str(src), "-o", str(out),
        f"-L{torch.lib}", "-lc10",
    ]  # fmt: skip
    if torch26:
        cmd.insert(1, "-DABIPROBE_TORCH26")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def compile_ops(torch: TorchTree, out: Path, *, torch26: bool = False) -> subprocess.Popen[str]:
    """Start g++ on the operator library (torch/library.h: about 6 s; callers run two at once). Wait on the result."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / "ops.cpp"
    src.write_text(OPS_CPP)
    cmd = [
        "g++", "-shared", "-fPIC", "-O1", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=0", f"-I{torch.include}",
        str(src), "-o", str(out), f"-L{torch.lib}", "-ltorch_cpu", "-lc10",
    ]  # fmt: skip
    if torch26:
        cmd.insert(1, "-DABIPROBE_TORCH26")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def compile_cuda_probe(nvcc: Path, cudart_dir: Path, out: Path, package: str, gencode: list[str]) -> Path:
    """nvcc the kernel for the given -gencode flags, then link it with a binding into a module; a few seconds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    kernel = out.parent / "kernel.cu"
    kernel.write_text(KERNEL_CU)
    obj = out.parent / "kernel.o"
    subprocess.run(
        [str(nvcc), "-c", "-Xcompiler", "-fPIC", *gencode, str(kernel), "-o", str(obj)],
        check=True,
        capture_output=True,
        text=True,
    )
    binding = out.parent / "binding.cpp"
    binding.write_text(BINDING_CPP)
    subprocess.run(
        ["g++", "-shared", "-fPIC", "-O1", f'-DMODULE_NAME="{package}._C"', f"-I{python_include()}", str(binding),
         str(obj), "-o", str(out), f"-L{cudart_dir}", "-l:libcudart.so.12"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out


def compile_object(nvcc: Path, out: Path, gencode: list[str]) -> Path:
    kernel = out.with_suffix(".cu")
    kernel.write_text(KERNEL_CU)
    subprocess.run(
        [str(nvcc), "-c", "-Xcompiler", "-fPIC", *gencode, str(kernel), "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(
    folder: Path,
    package: str,
    module: Path,
    *,
    version: str = f"0.1.0+{LABEL}",
    metadata_version: str | None = None,
    init: str = "",
    filename: str = f"_C{EXT_SUFFIX}",
) -> Path:
    """A wheel holding ``package/__init__.py`` (``init``) and ``package/<filename>`` (``module``); RECORD always
    right."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{package}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {package}\nVersion: {metadata_version or version}\n"
    tag = f"{PY_TAG}-{PY_TAG}-linux_x86_64"
    files = {
        f"{package}/__init__.py": init.encode(),
        f"{package}/{filename}": module.read_bytes(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\nTag: {tag}\n".encode(),
    }
    path = folder / f"{package}-{version}-{tag}.whl"
    rows = [[name, _record_hash(data), str(len(data))] for name, data in files.items()]
    rows.append([f"{info}/RECORD", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", buf.getvalue())
    return path
