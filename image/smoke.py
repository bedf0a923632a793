"""The image's smoke test: runs inside the image (standard library only), at the end of the build and once more after.

    python /opt/smoke/smoke.py --expect /opt/smoke/expect.json [--report FILE] [--json]

Each check imports what a job will import, without a GPU (none exists at build time): torch and its CUDA libraries,
our wheels (flash_attn with its CUDA extension, mmcv.ops with ``mmcv._ext``), xformers, onnxruntime with its CUDA
provider's libraries resolved, ComfyUI's modules and every node pack (ComfyUI's own ``--quick-test-for-ci`` start),
and that no compiler is present. ``expect.json`` (written by `nox -s image`) says the profile, our packages, the node
packs and which checks to skip. The report holds no timings, so an unchanged image gives an unchanged report.
Exit status 1 when a check that was not skipped fails.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

Details = dict[str, Any]
COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "clang++", "nvcc", "cpp")
COMPILER_GLOBS = ("gcc-[0-9]*", "g++-[0-9]*", "*-linux-gnu-gcc*", "*-linux-gnu-g++*", "clang-[0-9]*")


class CheckFailed(Exception):
    pass


def _import(name: str) -> Any:
    return importlib.import_module(name)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Checks


def check_python(expect: Details) -> Details:
    want = expect.get("python", "3.11")
    have = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if have != want:
        raise CheckFailed(f"Python {have}, expected {want}")
    return {"version": sys.version.split()[0], "executable": sys.executable}


def check_torch(expect: Details) -> Details:
    torch = _import("torch")
    details: Details = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
    }
    if torch.version.cuda is None:
        raise CheckFailed(f"torch {torch.__version__} is a CPU build")
    details["cudnn"] = torch.backends.cudnn.version()  # loads libcudnn from the nvidia wheels
    return details


def _top_level_modules(dist: str) -> list[str]:
    d = importlib.metadata.distribution(dist)
    text = d.read_text("top_level.txt")
    if text:
        return sorted({line.strip() for line in text.splitlines() if line.strip()})
    names: set[str] = set()
    for f in d.files or []:
        parts = f.parts
        if len(parts) == 2 and parts[1] == "__init__.py":
            names.add(parts[0])
        elif len(parts) == 1 and (parts[0].endswith(".py") or parts[0].endswith(".so")):
            names.add(parts[0].split(".", 1)[0])
    return sorted(n for n in names if not n.endswith(".dist-info") and n.isidentifier())


def check_ours(expect: Details) -> Details:
    """Every wheel of ours that the image holds imports (after torch, which their extensions need first)."""
    _import("torch")
    found: Details = {}
    for dist in expect.get("ours", []):
        version = _version(dist)
        if version is None:
            raise CheckFailed(f"{dist} is not installed")
        modules = _top_level_modules(dist)
        if not modules:
            raise CheckFailed(f"{dist} {version} installs no importable module")
        for module in modules:
            _import(module)
        found[dist] = {"version": version, "modules": modules}
    return found


def check_torchvision(expect: Details) -> Details:
    _import("torch")
    tv = _import("torchvision")
    import torch

    if not hasattr(torch.ops.torchvision, "nms"):
        raise CheckFailed("torchvision's C++ operators are not registered")
    ta = _import("torchaudio")
    return {"torchvision": tv.__version__, "torchaudio": ta.__version__}


def check_xformers(expect: Details) -> Details:
    _import("torch")
    xf = _import("xformers")
    _import("xformers.ops")
    return {"version": xf.__version__}


def check_flash_attn(expect: Details) -> Details:
    _import("torch")
    fa = _import("flash_attn")
    ext = _import("flash_attn_2_cuda")
    return {"version": fa.__version__, "extension": os.path.basename(ext.__file__)}


def check_mmcv(expect: Details) -> Details:
    _import("torch")
    mmcv = _import("mmcv")
    ops = _import("mmcv.ops")
    ext = _import("mmcv._ext")
    if not hasattr(ops, "nms"):
        raise CheckFailed("mmcv.ops has no nms")
    return {"version": mmcv.__version__, "extension": os.path.basename(ext.__file__)}


def check_openmmlab(expect: Details) -> Details:
    found = {}
    for module in ("mmengine", "mmdet", "mmpose"):
        found[module] = _import(module).__version__
    return found


def check_onnxruntime(expect: Details) -> Details:
    """The CUDA provider is in the wheel, and every library it needs (CUDA, cuBLAS, cuDNN: the nvidia wheels, found
    through LD_LIBRARY_PATH) resolves with the symbol versions it wants: ``ldd -r``, which runs none of its code.
    Two things legitimately stay unresolved without a GPU: libcuda.so.1 (the driver, mounted at run time) and
    Provider_GetHost (onnxruntime's own core provides it when it loads the provider)."""
    ort = _import("onnxruntime")
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise CheckFailed(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {providers})")
    provider = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    if not os.path.exists(provider):
        raise CheckFailed(f"onnxruntime's CUDA provider library is missing: {provider}")
    out = subprocess.run(["ldd", "-r", provider], capture_output=True, text=True)
    problems = []
    for line in (out.stdout + out.stderr).splitlines():
        line = line.strip()
        missing_library = "not found" in line and not line.startswith("libcuda.so")
        missing_symbol = line.startswith("undefined symbol") and "Provider_GetHost" not in line
        if missing_library or missing_symbol:
            problems.append(line)
    if problems:
        raise CheckFailed(
            f"onnxruntime {ort.__version__}'s CUDA provider cannot load here:\n  " + "\n  ".join(problems[:15])
        )
    return {"version": ort.__version__, "providers": providers}


def check_runtime_libs(expect: Details) -> Details:
    found = {}
    for module, dist in (("huggingface_hub", "huggingface_hub"), ("runpod", "runpod")):
        _import(module)
        found[module] = _version(dist)
    return found


# ComfyUI's "Import times for custom nodes" lines, after any log prefix ("[INFO]", colours).
_IMPORT_LINE = re.compile(r"\s[\d.]+ seconds(?P<failed> \(IMPORT FAILED\))?: (?P<path>/.+?)\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BUILTIN_FAILED = re.compile(r"IMPORT FAILED: (?P<name>\S+)\s*$")


def check_comfyui(expect: Details) -> Details:
    """ComfyUI's own start with --quick-test-for-ci: every module and every custom node imported, then exit."""
    root = expect.get("comfyui", "/opt/ComfyUI")
    packs = list(expect.get("nodes", []))
    with tempfile.TemporaryDirectory(prefix="smoke-comfyui-") as tmp:
        dirs = {k: os.path.join(tmp, k) for k in ("output", "temp", "input", "user")}
        for d in dirs.values():
            os.makedirs(d)
        cmd = [
            sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--dont-print-server",
            "--output-directory", dirs["output"], "--temp-directory", dirs["temp"],
            "--input-directory", dirs["input"], "--user-directory", dirs["user"],
            "--database-url", "sqlite:///:memory:",
        ]  # fmt: skip
        env = {**os.environ, "HOME": tmp, "MPLCONFIGDIR": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(cmd, cwd=root, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=900)  # fmt: skip
    log = proc.stdout
    loaded: set[str] = set()  # a pack with a prestartup script is listed twice (prestartup, then import)
    failed: set[str] = set()
    builtin_failed: list[str] = []
    for line in _ANSI.sub("", log).splitlines():
        m = _IMPORT_LINE.search(" " + line)
        if m:
            name = os.path.basename(m.group("path").rstrip("/"))
            (failed if m.group("failed") else loaded).add(name)
            continue
        m = _BUILTIN_FAILED.search(line)
        if m:  # ComfyUI's own comfy_extras / comfy_api_nodes modules
            builtin_failed.append(m.group("name"))
    version = None
    m = re.search(r"ComfyUI version: (\S+)", log)
    if m:
        version = m.group(1)
    details: Details = {
        "version": version,
        "exit_status": proc.returncode,
        "node_packs_loaded": sorted(loaded),
        "node_packs_failed": sorted(failed),
        "builtin_nodes_failed": sorted(builtin_failed),
    }
    missing = [p for p in packs if p not in loaded]
    if proc.returncode != 0 or missing or failed or builtin_failed:
        tail = "\n".join(log.splitlines()[-60:])
        why = []
        if proc.returncode != 0:
            why.append(f"ComfyUI exited with {proc.returncode}")
        if missing:
            why.append(f"node packs not loaded: {', '.join(missing)}")
        if builtin_failed:
            why.append(f"ComfyUI's own node modules that did not import: {', '.join(builtin_failed)}")
        raise CheckFailed("; ".join(why) + f"\n--- last lines of ComfyUI's log ---\n{tail}")
    return details


def _compilers_on(dirs: list[str]) -> list[str]:
    found = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in COMPILERS:
            path = os.path.join(d, name)
            if os.path.exists(path):
                found.append(path)
        for pattern in COMPILER_GLOBS:
            found += glob.glob(os.path.join(d, pattern))
    return sorted(set(found))


def check_no_compiler(expect: Details) -> Details:
    """No C/C++/CUDA compiler anywhere on PATH, in the usual places, or in the Python environment."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    dirs += ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/usr/local/cuda/bin", sys.prefix + "/bin"]
    dirs += glob.glob("/usr/local/cuda*/bin") + glob.glob("/usr/lib/gcc/*/*")
    found = _compilers_on(sorted(set(dirs)))
    for root in (sys.prefix, "/opt", "/usr/local"):  # nvcc shipped inside a wheel or a toolkit folder
        for dirpath, _, filenames in os.walk(root):
            if "nvcc" in filenames:
                found.append(os.path.join(dirpath, "nvcc"))
    found = sorted(set(found))
    if found:
        raise CheckFailed("compilers present: " + ", ".join(found))
    return {"searched": "PATH, /usr/bin, /usr/local, /opt, the venv", "which": {c: shutil.which(c) for c in COMPILERS}}


CHECKS: dict[str, tuple[tuple[str, ...], Callable[[Details], Details]]] = {
    "python": (("core", "full"), check_python),
    "torch": (("core", "full"), check_torch),
    "ours": (("core", "full"), check_ours),
    "torchvision": (("full",), check_torchvision),
    "xformers": (("full",), check_xformers),
    "flash_attn": (("full",), check_flash_attn),
    "mmcv.ops": (("full",), check_mmcv),
    "openmmlab": (("full",), check_openmmlab),
    "onnxruntime": (("full",), check_onnxruntime),
    "runtime-libs": (("full",), check_runtime_libs),
    "comfyui": (("full",), check_comfyui),
    "no-compiler": (("core", "full"), check_no_compiler),
}


def run(expect: Details) -> Details:
    profile = expect.get("profile", "full")
    skip = set(expect.get("skip", []))
    unknown = skip - set(CHECKS)
    if unknown:
        raise SystemExit(f"smoke: unknown checks to skip: {sorted(unknown)}; known: {sorted(CHECKS)}")
    results = []
    for name, (profiles, func) in CHECKS.items():
        if profile not in profiles:
            continue
        if name in skip:
            results.append({"name": name, "ok": None, "skipped": True})
            continue
        try:
            results.append({"name": name, "ok": True, "details": func(expect)})
        except CheckFailed as e:
            results.append({"name": name, "ok": False, "error": str(e)})
        except Exception as e:  # an import error, a missing library: the check failed, with its cause
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            results.append({"name": name, "ok": False, "error": tb})
    ok = all(r["ok"] is not False for r in results)
    return {"profile": profile, "ok": ok, "checks": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expect", default="/opt/smoke/expect.json")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--json", action="store_true", help="end with the report as one line: smoke-report: {...}")
    args = parser.parse_args(argv)
    with open(args.expect) as f:
        expect = json.load(f)
    report = run(expect)
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text + "\n")
    for r in report["checks"]:
        state = "SKIPPED" if r.get("skipped") else ("ok" if r["ok"] else "FAILED")
        line = f"smoke: {state:7} {r['name']}"
        if r.get("ok"):
            line += "  " + json.dumps(r["details"], sort_keys=True)[:300]
        print(line)
        if r.get("ok") is False:
            print("        " + r["error"].replace("\n", "\n        "))
    print(f"smoke: {'passed' if report['ok'] else 'FAILED'} ({report['profile']} profile)")
    if args.json:
        print("smoke-report: " + json.dumps(report, sort_keys=True), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
