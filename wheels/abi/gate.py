"""The gate's driver: builds a fresh runtime environment per wheel and runs every check, then gives a verdict.

Pure analysis lives in sibling modules (elf, fatbin, loader, analysis, checks, policy) and takes paths and data; this
module is the only one that creates environments or runs programs. Inside the new environment (the target's pinned
torch and the wheel, installed without dependencies: no compiler, no build tools) a small probe, run by the
environment's own Python, reports where things are; everything else is read from those files.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from packaging.utils import parse_wheel_filename

from .. import log
from ..envs import PythonEnv, fresh_env, install_torch
from ..errors import EnvError
from .analysis import Load, Runtime, link, load_plan, wheel_files
from .checks import (
    TorchFacts,
    check_cuda,
    check_cxx11_abi,
    check_integrity,
    check_loaded,
    check_portability,
    check_symbols,
)
from .loader import DEFAULT_DIRS, System, parse_ldconfig
from .model import CheckResult, Expectation, GateReport
from .policy import Ceilings, Policy, load_policy, resolve_base

__all__ = ["CheckResult", "Expectation", "GateReport", "check_import", "check_integrity", "check_wheel"]

# Run by the gate environment's Python, as one process: it reports where the interpreter, torch, the wheel's files and
# the system's libraries are (written to a file, then "ready" on stdout), waits for what to load on stdin (extension
# modules and torch operator libraries), and loads them after `import torch`: modules by import, operator libraries
# with torch.ops.load_library, as their packages do. One torch import serves both; a crash while loading comes after
# the facts are safe, and is a verdict, not an error.
_PROBE = r"""
import importlib, importlib.metadata as md, json, os, platform, shutil, subprocess, sys
dist, facts_path, imports_path = sys.argv[1:4]
# stdout is the handshake channel alone: whatever torch or an extension prints goes to stderr (a file).
handshake = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
out = {"executable": os.path.realpath(sys.executable), "python": "%d.%d" % sys.version_info[:2],
       "python_tag": "cp%d%d" % sys.version_info[:2], "machine": platform.machine(),
       "ld_library_path": os.environ.get("LD_LIBRARY_PATH", "")}
try:
    d = md.distribution(dist)
    out["files"] = {str(f): os.path.realpath(f.locate()) for f in (d.files or []) if ".so" in f.name}
except md.PackageNotFoundError as e:
    out["files_error"] = "%s is not installed" % e
ldconfig = shutil.which("ldconfig") or next(
    (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
try:
    out["ldconfig"] = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=60).stdout
except Exception:
    out["ldconfig"] = ""
try:
    import torch
except Exception as e:
    out["torch_error"] = "%s: %s" % (type(e).__name__, e)
else:
    here = os.path.dirname(os.path.realpath(torch.__file__))
    deps = os.path.join(here, "lib", "libtorch_global_deps.so")
    out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                    "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
                    "c_module": os.path.realpath(torch._C.__file__),
                    "global_deps": deps if os.path.exists(deps) else None}
with open(facts_path, "w") as f:
    json.dump(out, f)
print("ready", file=handshake, flush=True)
request = sys.stdin.readline()
if not request.strip() or "torch" not in out:
    sys.exit(0)
def load(mod):
    # By its file when the wheel has one: a package's __init__ and its pure-Python dependencies (mmcv's imports
    # mmengine) must not stand between the gate, which installs the wheel alone, and the compiled module it checks.
    import importlib.machinery, importlib.util
    for rel, real in out.get("files", {}).items():
        if rel.split(".")[0] == mod.replace(".", "/"):
            loader = importlib.machinery.ExtensionFileLoader(mod, real)
            spec = importlib.util.spec_from_file_location(mod, real, loader=loader)
            loader.exec_module(importlib.util.module_from_spec(spec))
            return
    importlib.import_module(mod)
def load_library(path):
    # The operator names it registers (TORCH_LIBRARY): evidence that it did what it is for.
    names = getattr(torch._C, "_dispatch_get_all_op_names", None)
    before = set(names()) if names else set()
    torch.ops.load_library(path)
    return sorted(set(names()) - before) if names else None
results = []
for item in json.loads(request):
    result = {"error": None, "operators": None}
    try:
        if item["kind"] == "torch-library":
            result["operators"] = load_library(item["path"])
        else:
            load(item["name"])
    except Exception as e:
        result["error"] = "%s: %s" % (type(e).__name__, e)
    results.append(result)
with open(imports_path, "w") as f:
    json.dump(results, f)
"""


class Probe:
    """The probe process of one gate environment: ``facts()`` first, then ``load()`` once."""

    def __init__(self, env: PythonEnv, distribution: str, tmp: Path) -> None:
        self.env = env
        self.facts_path = tmp / "facts.json"
        self.imports_path = tmp / "imports.json"
        self.stderr_path = tmp / "probe.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [str(env.python), "-c", _PROBE, distribution, str(self.facts_path), str(self.imports_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env.environ(),
        )

    def _tail(self) -> str:
        self._stderr.flush()
        return "\n".join(self.stderr_path.read_text(errors="replace").strip().splitlines()[-8:])

    def facts(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.wait()
            raise EnvError(
                f"The gate's probe died in {self.env.path} (exit {self.proc.returncode})\n{self._tail()}",
                fix="run the environment's python by hand to see why; WHEELS_KEEP_ENVS=1 keeps it",
            )
        facts = json.loads(self.facts_path.read_text())
        if "torch_error" in facts:
            raise EnvError(
                f"torch does not import in the gate environment {self.env.path}: {facts['torch_error']}",
                fix="install torch there, or for the system torch build point --system-python at an interpreter "
                "that has it",
            )
        return facts

    def load(self, plan: Sequence[Load]) -> tuple[list[dict[str, Any]] | None, str]:
        """Per item of ``plan``: {"error": None or why, "operators": registered names}; or (None, why) on a crash."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([dataclasses.asdict(item) for item in plan]) + "\n")
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.close()
            return None, "loading took longer than 10 minutes"
        if rc != 0 or not self.imports_path.exists():
            signal = f"signal {-rc}" if rc < 0 else f"exit {rc}"
            return None, f"the loading process died ({signal}): {self._tail()}"
        return json.loads(self.imports_path.read_text()), ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._stderr.close()


def check_import(probe: Probe, plan: Sequence[Load]) -> CheckResult:
    """`import torch`, then each extension module (imported) and torch operator library (torch.ops.load_library), in
    the probe's process: a crash is a verdict, not an error."""
    if not plan:
        probe.load([])
        return check_loaded(plan, [], "")
    results, died = probe.load(plan)
    return check_loaded(plan, results, died)


def _install_wheel(env: PythonEnv, wheel: Path) -> CheckResult:
    try:
        env.install([str(wheel)], no_deps=True, constraints=False, what=wheel.name)
    except EnvError as e:
        lines = [line for line in e.what.splitlines() if line.strip() and not line.startswith("---")]
        return CheckResult(
            name="install",
            passed=False,
            summary="the installer refuses the wheel",
            problems=lines[-6:],
            cause="a malformed wheel (see integrity)",
            fix="rebuild it with `nox -s wheels`",
        )
    return CheckResult(name="install", passed=True, summary="installed without dependencies next to torch")


def _runtime(facts: dict[str, Any]) -> Runtime:
    torch = facts["torch"]
    ld_path = tuple(p for p in facts.get("ld_library_path", "").split(":") if p)
    return Runtime(
        executable=Path(facts["executable"]),
        torch_c=Path(torch["c_module"]) if torch.get("c_module") else None,
        torch_global_deps=Path(torch["global_deps"]) if torch.get("global_deps") else None,
        system=System(
            ld_library_path=ld_path, cache=parse_ldconfig(facts.get("ldconfig", "")), default_dirs=DEFAULT_DIRS
        ),
    )


def _checks(
    wheel: Path,
    expect: Expectation,
    facts: dict[str, Any],
    installed: CheckResult,
    probe: Probe,
    base: Ceilings,
    policy: Policy,
    platforms: list[str],
    clock: Stopwatch,
) -> tuple[list[CheckResult], str | None, dict[str, Any]]:
    tf = facts["torch"]
    torch = TorchFacts(tf["version"], tf["cuda"], tf["cxx11_abi"])
    torch_record = {"version": torch.version, "cuda": torch.cuda, "cxx11_abi": torch.cxx11_abi}
    checks = [check_integrity(wheel, expect, {**torch_record, "python_tag": facts["python_tag"]}), installed]
    if installed.passed and "files_error" in facts:
        installed = CheckResult(
            name="install",
            passed=False,
            summary="installed, but the environment does not list it",
            problems=[facts["files_error"]],
            cause="the distribution name in METADATA differs from the file name's",
        )
        checks[1] = installed
    if not installed.passed:
        probe.load([])
        return checks, None, torch_record
    files = wheel_files({member: Path(path) for member, path in facts.get("files", {}).items()})
    linkages = link(files, _runtime(facts))
    portability, platform_tag = check_portability(files, base, policy, platforms, arch=facts.get("machine", "x86_64"))
    checks += [
        check_symbols(linkages, torch),
        check_cxx11_abi(files, torch),
        check_cuda(files, torch, expect.cuda_archs),
        portability,
    ]
    clock.lap("analysis")
    checks.append(check_import(probe, load_plan(files, expect.extension_modules)))
    clock.lap("import")
    return checks, platform_tag, torch_record


class Stopwatch:
    """Seconds per phase of one gate run, for the report (how long the gate takes, and where)."""

    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.laps[phase] = round(now - self._last, 2)
        self._last = now

    @property
    def total(self) -> float:
        return round(time.monotonic() - self.started, 1)


class _KeepEnv(Exception):
    """Raised inside the environment's context to keep it for inspection after a failed verdict."""


def check_wheel(
    wheel: Path,
    expect: Expectation,
    *,
    system_python: str = "python3",
    keep_env: bool = False,
    work: Path | None = None,
) -> GateReport:
    """Run every check for one wheel in a new environment holding only its runtime: torch and the wheel."""
    base = resolve_base(expect.base, load_policy())  # a bad setting fails before any environment is made
    clock = Stopwatch()
    report: GateReport | None = None
    with log.step(f"ABI gate: {wheel.name} (torch: {expect.torch.name}, image base: {base.name})"):
        try:
            with fresh_env(expect.python, system_python, keep=keep_env, prefix="gate-", parent=work) as env:
                clock.lap("new_env")
                install_torch(env, expect.torch)
                clock.lap("torch_install")
                installed = _install_wheel(env, wheel)
                clock.lap("wheel_install")
                report = check_in_env(wheel, expect, env, installed=installed, clock=clock)
                if keep_env and not report.passed:
                    raise _KeepEnv
        except _KeepEnv:
            pass
    assert report is not None
    log.info(report.human())
    return report


def check_in_env(
    wheel: Path,
    expect: Expectation,
    env: PythonEnv,
    *,
    installed: CheckResult | None = None,
    clock: Stopwatch | None = None,
) -> GateReport:
    """Every check, against an environment that already holds the runtime (torch) and the wheel.

    The gate's own fresh environment (above) comes here, and so does the container backend's test step: cibuildwheel's
    fresh test environment inside the builder image, which installed the wheel itself (wheels/container/incontainer.py).
    """
    policy = load_policy()
    base = resolve_base(expect.base, policy)
    name, _, _, tags = parse_wheel_filename(wheel.name)
    platforms = sorted({t.platform for t in tags})
    clock = clock or Stopwatch()
    if installed is None:
        installed = CheckResult(name="install", passed=True, summary="installed without dependencies next to torch")
    with tempfile.TemporaryDirectory(prefix="gate-probe-") as tmp:
        probe = Probe(env, str(name), Path(tmp))
        try:
            facts = probe.facts()
            clock.lap("probe")
            checks, platform_tag, torch_record = _checks(
                wheel, expect, facts, installed, probe, base, policy, platforms, clock
            )
        finally:
            probe.close()
    return GateReport(
        wheel=wheel.name,
        checks=checks,
        torch=torch_record,
        checked_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        expectation={**expect.as_record(), "base": base.name},
        platform_tag=platform_tag,
        seconds=clock.total,
        timings=clock.laps,
    )
