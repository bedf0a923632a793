"""The gate's driver: builds a fresh runtime environment per wheel and runs every check, then gives a verdict.

Pure analysis lives in sibling modules and takes paths and data; this module is the only one that creates
environments or runs programs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

from .. import log
from ..envs import PythonEnv, fresh_env, install_torch
from ..errors import GateError
from ..options import TorchBuild
from ..util import run
from ..wheelfile import read_metadata, record_problems


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a wheel is checked against: its target, or overrides given on the command line."""

    package: str
    version: str  # without label
    torch: TorchBuild
    python: str  # "3.11" or "system"
    cuda_archs: tuple[str, ...]  # TORCH_CUDA_ARCH_LIST form: ("8.0", "9.0+PTX")
    extension_modules: tuple[str, ...]
    flavour: str | None = None
    default_flavour: str | None = None


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str
    problems: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GateReport:
    wheel: str
    checks: list[CheckResult]
    torch: dict[str, Any] | None
    checked_at: str

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "wheel": self.wheel,
            "verdict": self.verdict,
            "torch": self.torch,
            "checked_at": self.checked_at,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def human(self) -> str:
        lines = [f"ABI gate: {self.wheel}: {self.verdict.upper()}"]
        for c in self.checks:
            lines.append(f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.summary}")
            for problem in c.problems[:40]:
                lines.append(f"         - {problem}")
            if len(c.problems) > 40:
                lines.append(f"         ... and {len(c.problems) - 40} more (see the JSON report)")
        return "\n".join(lines)


def check_integrity(wheel: Path, expect: Expectation, torch: dict[str, Any] | None) -> CheckResult:
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    from ..label import local_label, parse_label

    problems: list[str] = []
    name, file_version, _, tags = parse_wheel_filename(wheel.name)
    meta = read_metadata(wheel)
    meta_name, meta_version = meta["Name"], Version(meta["Version"])
    if canonicalize_name(meta_name) != name:
        problems.append(f"METADATA Name {meta_name!r} disagrees with the file name's {name!r}")
    if meta_version != file_version:
        problems.append(f"METADATA Version {meta_version} disagrees with the file name's version {file_version}")
    if canonicalize_name(expect.package) != name:
        problems.append(f"the wheel is {name}, the target builds {expect.package}")
    if file_version.base_version != Version(expect.version).base_version or file_version.public != str(
        Version(expect.version)
    ):
        problems.append(f"the wheel's version {file_version.public} is not the target's {expect.version}")
    problems += record_problems(wheel)
    label = file_version.local
    if label is None:
        problems.append("the wheel has no local version label (+cuXXXtorchX.Y): its torch build is unknowable")
    elif torch is not None:
        from ..envs import TorchInfo

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
            problems.append(f"label {label} does not match the torch it is checked against ({want}): " + "; ".join(why))
    py = expect.python
    if py != "system":
        want_tag = "cp" + py.replace(".", "")
        if not any(t.interpreter == want_tag for t in tags):
            problems.append(f"tags {sorted(str(t) for t in tags)} do not fit Python {py} ({want_tag})")
    return CheckResult(
        name="integrity",
        passed=not problems,
        summary="RECORD, name, version, label and tags agree" if not problems else f"{len(problems)} problem(s)",
        problems=problems,
    )


_IMPORT_PROBE = r"""
import importlib, json, sys
import torch
out = {}
for mod in sys.argv[1:]:
    try:
        importlib.import_module(mod)
        out[mod] = None
    except Exception as e:
        out[mod] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""


def check_import(env: PythonEnv, expect: Expectation) -> CheckResult:
    result = run([env.python, "-c", _IMPORT_PROBE, *expect.extension_modules], error=GateError, what="Import probe")
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    problems = [f"import {mod} failed: {err}" for mod, err in errors.items() if err]
    return CheckResult(
        name="import",
        passed=not problems,
        summary=f"import torch, then {', '.join(expect.extension_modules)}" if not problems else "import failed",
        problems=problems,
    )


def check_wheel(
    wheel: Path, expect: Expectation, *, system_python: str = "python3", keep_env: bool = False, work: Path | None = None
) -> GateReport:
    """Run every check for one wheel in a new environment holding only its runtime: torch and the wheel."""
    with log.step(f"ABI gate: {wheel.name} (torch: {expect.torch.name})"):
        with fresh_env(expect.python, system_python, keep=keep_env, prefix="gate-", parent=work) as env:
            install_torch(env, expect.torch)
            env.install([str(wheel)], no_deps=True, constraints=False, what=wheel.name)
            torch = env.torch_info()
            checks = [check_integrity(wheel, expect, torch.as_record()), check_import(env, expect)]
            report = GateReport(
                wheel=wheel.name,
                checks=checks,
                torch=torch.as_record(),
                checked_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            )
        log.info(report.human())
        return report
