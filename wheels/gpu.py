"""`nox -s gpu_test`: prove gated wheels on a GPU, each in a fresh environment (or inside a built image).

    python -m wheels gpu-test [TARGET ...]           every gated wheel, fresh env with its pinned torch
    python -m wheels gpu-test --system-torch         the torch already on this host; nothing is downloaded
    python -m wheels gpu-test --image TAG            the same tests inside an image (docker run --gpus all)

Without a GPU it says so and exits non-zero (unless --allow-no-gpu): it never reports a pass it did not run.
Results (numbers, GPU, driver, torch, wheel hashes) go to a JSON report and bench/results.md.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import log
from .envs import PythonEnv, fresh_env, install_torch
from .errors import ConfigError, GpuError
from .manifest import Record, Wheelhouse
from .options import REPO_ROOT, load_matrix
from .util import atomic_write_json, run

TESTS = REPO_ROOT / "tests" / "gpu"
RESULTS_MD = REPO_ROOT / "bench" / "results.md"
# Per package: its test module and what the tests need besides torch and the wheel. `with_deps` are installed with
# their dependencies (under constraints.txt); `no_deps` alone (mmdet/mmpose would otherwise pull torchvision and
# chumpy's sdist). With --system-torch, anything the host interpreter already has is taken from it instead.
SUITES: dict[str, dict[str, Any]] = {
    "canary": {"module": "test_canary_gpu.py", "with_deps": [], "no_deps": []},
    "flash-attn": {"module": "test_flash_attn_gpu.py", "with_deps": ["einops"], "no_deps": []},
    "mmcv": {
        "module": "test_mmcv_gpu.py",
        # mmengine and its own dependencies are named: with --system-torch everything goes in without dependencies.
        "with_deps": ["mmengine", "addict", "yapf", "platformdirs", "termcolor", "rich", "pyyaml", "numpy",
                      "opencv-python-headless", "scipy", "shapely", "pycocotools", "terminaltables", "json-tricks",
                      "munkres", "xtcocotools", "matplotlib"],
        "no_deps": ["mmdet", "mmpose"],
    },
}
TEST_TOOLS = ["pytest", "pytest-timeout"]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nox -s gpu_test --", description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="*", help="target names or globs (default: every gated wheel)")
    p.add_argument("--system-torch", action="store_true", help="use the torch installed in --system-python")
    p.add_argument("--system-python", default=os.environ.get("WHEELS_SYSTEM_PYTHON", "python3"))
    p.add_argument("--image", help="run the tests inside this image instead (docker run --gpus all)")
    p.add_argument("--wheelhouse", type=Path, default=Path(os.environ.get("WHEELHOUSE", "wheelhouse")))
    p.add_argument("--report", type=Path, help="JSON report path (default: <wheelhouse>/gpu-report.json)")
    p.add_argument("--results-md", type=Path, default=RESULTS_MD, help="markdown file the results are appended to")
    p.add_argument("--allow-no-gpu", action="store_true", help="without a GPU, skip (exit 0) instead of failing")
    p.add_argument("--keep-envs", action="store_true")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")
    return p.parse_args(list(argv))


def gpu_info(python: str) -> dict[str, Any] | None:
    """GPU name, driver and torch facts as the given interpreter's torch sees them; None when it sees no GPU."""
    probe = (
        "import json, torch\n"
        "ok = torch.cuda.is_available()\n"
        "print(json.dumps(dict(ok=ok, torch=torch.__version__, cuda=torch.version.cuda,"
        " name=torch.cuda.get_device_name(0) if ok else None,"
        " capability='.'.join(map(str, torch.cuda.get_device_capability(0))) if ok else None)))\n"
    )
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
        info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"ok": False}
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        info = {"ok": False}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if q.returncode == 0 and q.stdout.strip():
            name, driver, memory = (s.strip() for s in q.stdout.splitlines()[0].split(","))
            info.update(smi_name=name, driver=driver, memory=memory)
    return info if info.get("ok") else None


def select(records: Mapping[str, Record], patterns: Sequence[str]) -> list[Record]:
    chosen = [r for r in records.values() if r.gate.get("verdict") == "pass"]
    if patterns:
        chosen = [r for r in chosen if any(fnmatch.fnmatchcase(r.target, p) for p in patterns)]
    return sorted(chosen, key=lambda r: r.target)


def _host_distributions(python: str) -> set[str]:
    code = "import json, importlib.metadata as m; print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions() if d.metadata['Name']})))"
    out = run([python, "-c", code], error=GpuError, what="Listing the host interpreter's packages")
    return {n.replace("_", "-") for n in json.loads(out.stdout)}


def _prepare_env(env: PythonEnv, record: Record, suite: dict[str, Any], wheel: Path, host: set[str] | None) -> None:
    def needed(names: list[str]) -> list[str]:
        return [n for n in names if host is None or n.lower() not in host]

    env.install([str(wheel)], no_deps=True, constraints=False, what=wheel.name)
    system = host is not None
    # On a host with its own torch nothing may pull a second torch: everything goes in without dependencies.
    env.install(needed(TEST_TOOLS + suite["with_deps"]), no_deps=system, what="test dependencies")
    env.install(needed(suite["no_deps"]), no_deps=True, what="test dependencies (no deps)")


def run_suite(env: PythonEnv, record: Record, suite: dict[str, Any], report: Path, extra: Sequence[str]) -> int:
    cmd = [str(env.python), "-m", "pytest", "-m", "gpu", str(TESTS / suite["module"]), "-p", "no:cacheprovider",
           "-o", "addopts=", "-rA", *extra]
    env_vars = env.environ()
    env_vars["GPU_TEST_REPORT"] = str(report)
    log.info(f"[{record.target}] {' '.join(cmd)}")
    return subprocess.run(cmd, env=env_vars, cwd=REPO_ROOT).returncode


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    extra = [a for a in args.pytest_args if a != "--"]
    if args.image:
        return run_in_image(args, extra)
    wheelhouse = Wheelhouse(args.wheelhouse.resolve())
    records = select(wheelhouse.records(), args.targets)
    if not records:
        raise ConfigError(f"No gated wheels to test in {wheelhouse.root}", fix="build some with `nox -s wheels`")
    probe_python = args.system_python if args.system_torch else None
    if probe_python is None:
        # The fresh environments get their torch from the index; ask nvidia-smi (no torch needed) whether a GPU exists.
        has_gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
        info: dict[str, Any] | None = {"ok": True} if has_gpu else None
    else:
        info = gpu_info(probe_python)
    if info is None:
        if args.allow_no_gpu:
            log.warn("no GPU on this host: gpu tests skipped (--allow-no-gpu); nothing was tested")
            return 0
        raise GpuError(
            "No GPU is visible on this host, so no wheel was tested",
            fix="run `nox -s gpu_test` on a GPU host (or pass --allow-no-gpu to skip explicitly)",
        )
    _, targets = load_matrix(Path(os.environ.get("WHEELS_MATRIX", REPO_ROOT / "wheels" / "matrix.toml")), os.environ)
    host = _host_distributions(args.system_python) if args.system_torch else None
    report_path = (args.report or wheelhouse.root / "gpu-report.json").resolve()
    results: list[dict[str, Any]] = []
    failures = 0
    for record in records:
        suite = SUITES.get(record.package)
        if suite is None:
            log.warn(f"[{record.target}] no gpu test suite for package {record.package}; skipped")
            continue
        if args.system_torch and record.torch.get("build") != "system":
            log.warn(f"[{record.target}] built for torch {record.torch.get('version')}, not this host's: skipped")
            continue
        target = targets.get(record.target)
        if target is None and not args.system_torch:
            raise ConfigError(f"Record {record.target} names no target of the matrix", fix="rebuild it")
        with tempfile.TemporaryDirectory(prefix="gpu-report-") as tmp:
            part = Path(tmp) / "measurements.json"
            python = "system" if args.system_torch else target.python
            with log.step(f"[{record.target}] gpu tests in a fresh environment"):
                with fresh_env(python, args.system_python, keep=args.keep_envs, prefix="gpu-") as env:
                    if not args.system_torch:
                        install_torch(env, target.torch)
                    _prepare_env(env, record, suite, wheelhouse.wheel_path(record), host)
                    torch_env = env.torch_info()
                    gpu = gpu_info(str(env.python)) or {}
                    rc = run_suite(env, record, suite, part, extra)
            measurements = json.loads(part.read_text()) if part.exists() else []
        failures += rc != 0
        results.append({
            "target": record.target, "wheel": record.filename, "sha256": record.sha256,
            "passed": rc == 0, "pytest_exit": rc, "torch": torch_env.as_record(), "gpu": gpu,
            "measurements": measurements,
        })
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cores": os.cpu_count(), "machine": platform.machine()},
        "results": results,
    }
    atomic_write_json(report_path, report)
    append_markdown(args.results_md, report)
    log.info(f"gpu report: {report_path}; summary appended to {args.results_md}")
    if not results:
        raise GpuError("No wheel had a gpu test suite that could run here", fix="see the warnings above")
    if failures:
        raise GpuError(f"{failures} of {len(results)} wheel(s) failed their gpu tests", fix="see pytest's output above")
    return 0


def append_markdown(path: Path, report: dict[str, Any]) -> None:
    lines = [f"\n## GPU tests, {report['date']}\n"]
    for r in report["results"]:
        gpu = r["gpu"]
        lines.append(
            f"### {r['target']}: {'PASS' if r['passed'] else 'FAIL'}\n\n"
            f"- wheel `{r['wheel']}` (sha256 `{r['sha256']}`)\n"
            f"- GPU {gpu.get('smi_name') or gpu.get('name')} (sm {gpu.get('capability')}), driver {gpu.get('driver')}, "
            f"torch {r['torch']['version']} (CUDA {r['torch']['cuda']})\n"
        )
        numbers = [m for m in r["measurements"] if m["unit"] not in ("abs",)]
        errors = [m for m in r["measurements"] if m["unit"] == "abs"]
        if errors:
            worst = max(errors, key=lambda m: m["value"] / max(m.get("torch_lowp_error", 0) or 1e-12, 1e-12))
            lines.append(f"- numerics: {len(errors)} comparisons within tolerance; worst ratio to torch's low-precision "
                         f"error: {worst['value']:.3e} vs {worst.get('torch_lowp_error', 0):.3e} ({worst['name']})\n")
        if numbers:
            lines.append("\n| measurement | value | details |\n|---|---|---|\n")
            for m in numbers:
                details = {k: v for k, v in m.items() if k not in ("test", "name", "value", "unit")}
                lines.append(f"| {m['name']} | {m['value']:.4g} {m['unit']} | {json.dumps(details)} |\n")
        lines.append("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(lines))


def run_in_image(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """The same tests inside a built image: tests and a pytest for the image's Python are mounted, nothing baked."""
    docker = os.environ.get("DOCKER", "/usr/bin/docker")
    with tempfile.TemporaryDirectory(prefix="gpu-image-") as tmp:
        deps, out = Path(tmp) / "deps", Path(tmp) / "out"
        out.mkdir()
        run(["uv", "pip", "install", "--quiet", "--target", deps, "--python-version", "3.11", "--constraint",
             REPO_ROOT / "constraints.txt", *TEST_TOOLS], error=GpuError, what="Preparing pytest for the image")
        modules = [f"/opt/gpu-tests/{s['module']}" for s in SUITES.values()]
        cmd = [docker, "run", "--rm", "--gpus", "all", "-v", f"{TESTS}:/opt/gpu-tests:ro", "-v", f"{deps}:/opt/gpu-deps:ro",
               "-v", f"{out}:/out", "-e", "PYTHONPATH=/opt/gpu-deps", "-e", "GPU_TEST_REPORT=/out/measurements.json",
               "--entrypoint", "python", args.image, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-o",
               "addopts=", "-rA", "--rootdir", "/opt/gpu-tests", *modules, *extra]
        log.info(" ".join(map(str, cmd)))
        rc = subprocess.run(list(map(str, cmd))).returncode
        measurements = json.loads((out / "measurements.json").read_text()) if (out / "measurements.json").exists() else []
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "image": args.image,
              "results": [{"target": f"image {args.image}", "wheel": "(installed in the image)", "sha256": "-",
                           "passed": rc == 0, "pytest_exit": rc, "torch": {"version": "image", "cuda": "image"},
                           "gpu": {}, "measurements": measurements}]}
    atomic_write_json((args.report or Path("gpu-image-report.json")).resolve(), report)
    append_markdown(args.results_md, report)
    if rc != 0:
        raise GpuError(f"gpu tests failed inside {args.image} (pytest exit {rc})")
    return 0
