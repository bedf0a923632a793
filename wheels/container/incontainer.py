"""The pipeline's steps that run inside the builder container, as cibuildwheel's hooks (``python -m`` this module).

A copy of the ``wheels`` package travels into the container with the project (``/project/support``); these commands
use the same code as the local backend, so labels, relabelling and gate checks are the same in both:

    build-info --out FILE            before-build: what the build interpreter's torch, compilers and ccache report
    relabel --expect FILE --build-info FILE --out DIR WHEEL
                                     repair, first half: the local version label from the build interpreter's torch
    check --expect FILE --report FILE WHEEL
                                     test: the gate's checks in cibuildwheel's fresh test environment

Needs only the standard library and ``packaging`` (installed with the build tools and as a test requirement).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..abi.gate import Expectation, GateReport, check_in_env
from ..envs import _TORCH_PROBE, PythonEnv, TorchInfo
from ..label import local_label
from ..options import TorchBuild
from ..toolchain import host_cxx_version, nvcc_version
from ..wheelfile import rewrite


def expectation_to_json(expect: Expectation) -> dict[str, Any]:
    return dataclasses.asdict(expect)


def expectation_from_json(data: dict[str, Any]) -> Expectation:
    fields = dict(data)
    fields["torch"] = TorchBuild(**fields["torch"])
    for name in ("cuda_archs", "extension_modules"):
        fields[name] = tuple(fields[name])
    return Expectation(**fields)


def this_torch() -> TorchInfo:
    """What the torch of the interpreter running this reports (the probe the pipeline uses everywhere)."""
    out = subprocess.run([sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, check=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    if "error" in info:
        raise SystemExit(f"torch does not import in {sys.executable}: {info['error']}")
    return TorchInfo(info["version"], info["cuda"], info["cxx11_abi"], Path(info["lib"]), info["python"],
                     info["python_tag"])


def _ccache_version() -> str | None:
    try:
        out = subprocess.run(["ccache", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    return out.splitlines()[0].strip() if out else None


def build_info() -> dict[str, Any]:
    torch = this_torch()
    cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    nvcc = nvcc_version(cuda_home / "bin" / "nvcc")
    return {
        "torch": {**torch.as_record(), "lib": str(torch.lib), "python": torch.python, "python_tag": torch.python_tag},
        "nvcc": nvcc[1] if nvcc else None,
        "host_cxx": host_cxx_version({"CXX": "c++"}),  # the real compiler (CXX points at ccache's masquerade)
        "ccache": _ccache_version(),
        "glibc": (os.confstr("CS_GNU_LIBC_VERSION") or "").removeprefix("glibc ") or None,
    }


def torch_from_build_info(data: dict[str, Any]) -> TorchInfo:
    t = data["torch"]
    return TorchInfo(t["version"], t["cuda"], t["cxx11_abi"], Path(t["lib"]), t["python"], t["python_tag"])


def relabel(wheel: Path, expect: Expectation, torch: TorchInfo, out: Path) -> Path:
    """The same relabelling as the local backend: version + label derived from the build interpreter's torch
    (as build-info reported it before the build: importing torch again here would cost seconds, not change it)."""
    label = local_label(torch, expect.flavour, expect.default_flavour)
    return rewrite(wheel, out, version=f"{expect.version}+{label}")


def check(wheel: Path, expect: Expectation) -> GateReport:
    """The gate's checks in this (fresh, cibuildwheel-made) environment, which holds torch and the wheel only."""
    report = check_in_env(wheel, expect, PythonEnv(Path(sys.prefix)))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wheels.container.incontainer")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build-info")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("relabel")
    p.add_argument("--expect", type=Path, required=True)
    p.add_argument("--build-info", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("wheel", type=Path)
    p = sub.add_parser("check")
    p.add_argument("--expect", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("wheel", type=Path)
    args = parser.parse_args(argv)

    if args.command == "build-info":
        info = build_info()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=2) + "\n")
        print(f"[wheels] build interpreter: torch {info['torch']['version']} (CUDA {info['torch']['cuda']}), "
              f"nvcc {info['nvcc']}, {info['host_cxx']}, {info['ccache']}", flush=True)
        return 0
    expect = expectation_from_json(json.loads(args.expect.read_text()))
    if args.command == "relabel":
        torch = torch_from_build_info(json.loads(args.build_info.read_text()))
        labelled = relabel(args.wheel, expect, torch, args.out)
        print(f"[wheels] relabelled {args.wheel.name} -> {labelled.name}", flush=True)
        return 0
    report = check(args.wheel, expect)
    data = report.to_dict()
    data["checked_in"] = {"where": "container", "python": sys.executable,
                          "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(data, indent=2) + "\n")
    print(report.human(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
