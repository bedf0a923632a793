"""``python -m wheels abi`` (``nox -s abi``): run the ABI gate on recorded wheels or on any wheel file.

    nox -s abi                                  every wheel recorded in the wheelhouse, against its target
    nox -s abi -- dist/x.whl ...                these wheels: a recorded one against its target, any other against
                                                what its label says it was built for
    --torch BUILD / --cuda-archs LIST / --python X.Y / --base NAME   override what they are checked against

A recorded wheel checked against its own target updates its record's gate verdict and its report
(``<wheelhouse>/reports/<wheel>.abi.json``). Any other check writes its JSON report to --report-dir (default: a
``reports`` folder beside the wheel), never over a record's own report. The exit status is non-zero when any wheel
fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from .. import log
from ..errors import ConfigError, GateError, unknown
from ..label import parse_label
from ..manifest import REPORTS, Record, Wheelhouse
from .. import options
from ..options import DEFAULT_MATRIX, Target, TorchBuild, check_env, load_matrix, load_torch_builds, parse_archs
from ..recipes import RECIPES
from ..util import atomic_write_json, sha256_file
from .gate import check_wheel
from .model import CheckResult, Expectation, GateReport
from .policy import load_policy, resolve_base


@dataclasses.dataclass(frozen=True)
class Job:
    """One wheel to check, what against, and where its verdict goes."""

    wheel: Path
    expect: Expectation
    record: Record | None  # set when the verdict updates this record
    report_path: Path


@dataclasses.dataclass(frozen=True)
class AbiOptions:
    wheels: tuple[Path, ...]
    wheelhouse: Path
    matrix_path: Path
    targets: Mapping[str, Target]
    torch_builds: Mapping[str, TorchBuild]
    torch: str | None
    cuda_archs: tuple[str, ...] | None
    python: str | None
    base: str | None
    system_python: str
    keep_envs: bool
    report_dir: Path | None
    as_json: bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nox -s abi --", description="Check wheels in a fresh environment holding only their runtime."
    )
    parser.add_argument(
        "wheels", nargs="*", type=Path, help="wheel files (default: every wheel recorded in the wheelhouse)"
    )
    parser.add_argument("--torch", help="torch build of the matrix to check against (cu121, cu124, system, ...)")
    parser.add_argument("--cuda-archs", help='archs the wheel must carry, TORCH_CUDA_ARCH_LIST form ("8.0;9.0+PTX")')
    parser.add_argument("--python", help='Python version of the environment ("3.11")')
    parser.add_argument(
        "--base", help="image base of the portability check (wheels/abi/policy.toml; WHEELS_IMAGE_BASE)"
    )
    parser.add_argument("--wheelhouse", type=Path, help="wheelhouse folder (WHEELHOUSE)")
    parser.add_argument("--matrix", type=Path, help="matrix file (WHEELS_MATRIX)")
    parser.add_argument("--system-python", help="interpreter whose torch the 'system' torch build uses")
    parser.add_argument(
        "--report-dir", type=Path, help="where reports of unrecorded checks go (default: beside the wheel)"
    )
    parser.add_argument("--keep-envs", action="store_true", help="keep the environment of a failed check")
    parser.add_argument("--json", action="store_true", help="also print every report as JSON on stdout")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    return options.parse_args(argv, build_parser())


def resolve(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> AbiOptions:
    """Matrix file < environment < command line, once."""
    check_env(env)
    args = parse_args(argv)
    cwd = cwd or Path.cwd()
    matrix_path = Path(args.matrix or env.get("WHEELS_MATRIX") or DEFAULT_MATRIX)
    settings, targets = load_matrix(matrix_path, env)
    builds = load_torch_builds(matrix_path, env)
    if args.torch and args.torch not in builds:
        raise unknown("torch build", args.torch, builds, "--torch")
    python = args.python
    if python is not None and not re.fullmatch(r"3\.\d+", python):
        raise ConfigError(f'Bad --python "{python}"', fix='write it as "3.11"')
    if args.torch == "system" and python:
        raise ConfigError(
            "--python does not go with --torch system", fix="the system torch runs in its own interpreter"
        )
    archs_text = args.cuda_archs or env.get("WHEELS_CUDA_ARCHS")
    archs = parse_archs(archs_text, "--cuda-archs / WHEELS_CUDA_ARCHS") if archs_text else None
    base = args.base or env.get("WHEELS_IMAGE_BASE") or None
    resolve_base(base, load_policy())  # an unknown base fails now, before any environment is made
    for wheel in args.wheels:
        if wheel.suffix != ".whl":
            raise ConfigError(f"{wheel} is not a wheel file (*.whl)")
        if not wheel.is_file():
            raise ConfigError(f"Wheel {wheel} does not exist")
    wheelhouse = Path(args.wheelhouse or env.get("WHEELHOUSE") or settings.get("wheelhouse", "wheelhouse")).expanduser()
    keep = bool(args.keep_envs) or (env.get("WHEELS_KEEP_ENVS", "").strip().lower() in {"1", "true", "yes", "on"})
    return AbiOptions(
        wheels=tuple(w if w.is_absolute() else cwd / w for w in args.wheels),
        wheelhouse=wheelhouse if wheelhouse.is_absolute() else cwd / wheelhouse,
        matrix_path=matrix_path,
        targets=targets,
        torch_builds=builds,
        torch=args.torch,
        cuda_archs=archs,
        python=python,
        base=base,
        system_python=args.system_python or env.get("WHEELS_SYSTEM_PYTHON") or "python3",
        keep_envs=keep,
        report_dir=args.report_dir,
        as_json=bool(args.json),
    )


# ---------------------------------------------------------------------------------------------------------------------
# What each wheel is checked against


def _recipe_for(package: str, targets: Mapping[str, Target]) -> str | None:
    for target in targets.values():
        if canonicalize_name(target.package) == canonicalize_name(package):
            return target.recipe
    return None


def _apply_overrides(expect: Expectation, opts: AbiOptions) -> Expectation:
    changes: dict[str, object] = {"base": opts.base}
    if opts.torch:
        torch = opts.torch_builds[opts.torch]
        changes["torch"] = torch
        if torch.source == "system":
            changes["python"] = "system"
        elif expect.python == "system":
            changes["python"] = opts.python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    if opts.python:
        changes["python"] = opts.python
    if opts.cuda_archs is not None:
        changes["cuda_archs"] = opts.cuda_archs
    return dataclasses.replace(expect, **changes)  # type: ignore[arg-type]


def _overridden(opts: AbiOptions) -> bool:
    return bool(opts.torch or opts.python or opts.cuda_archs is not None)


def expectation_for_record(record: Record, opts: AbiOptions) -> Expectation:
    """A recorded wheel's target: the matrix target of its record (torch build, Python, flavour, recipe modules), with
    the archs the record says it was built for (a build-time --cuda-archs is part of what it promises)."""
    target = opts.targets.get(record.target)
    if target is not None:
        recipe = RECIPES[target.recipe]
        torch, python, flavour = target.torch, target.python, target.flavour
        version = target.version
    else:
        build = str(record.torch.get("build", ""))
        if build not in opts.torch_builds:
            raise unknown(
                "torch build", build, opts.torch_builds, f"the record of {record.target} (its target is gone)"
            )
        torch = opts.torch_builds[build]
        python = "system" if torch.source == "system" else f"{record.python_tag[2]}.{record.python_tag[3:]}"
        recipe = RECIPES.get(_recipe_for(record.package, opts.targets) or "")  # type: ignore[assignment]
        flavour, version = record.flavour, record.version.split("+", 1)[0]
    default_flavour = recipe.flavours[0] if recipe and recipe.flavours else None
    return Expectation(
        package=record.package,
        version=version,
        torch=torch,
        python=python,
        cuda_archs=tuple(record.cuda_archs) or (target.cuda_archs if target else ()),
        extension_modules=recipe.extension_modules if recipe else (),
        flavour=flavour,
        default_flavour=default_flavour,
        label_required=not (recipe and recipe.prebuilt),
    )


def expectation_for_file(wheel: Path, opts: AbiOptions) -> Expectation:
    """A wheel without a record: its file name, its label and the package's recipe say what it is."""
    name, version, _, tags = parse_wheel_filename(wheel.name)
    recipe_name = _recipe_for(name, opts.targets)
    recipe = RECIPES.get(recipe_name) if recipe_name else None
    label = None
    if version.local:
        try:
            label = parse_label(version.local)
        except ValueError:
            label = None
    torch = _torch_for_label(wheel, label, name, opts)
    if torch.source == "system":
        python = "system"
    else:
        cps = sorted({t.interpreter for t in tags if re.fullmatch(r"cp3\d+", t.interpreter)})
        python = opts.python or (f"3.{cps[0][3:]}" if cps else f"{sys.version_info[0]}.{sys.version_info[1]}")
    archs: tuple[str, ...] = ()
    for target in opts.targets.values():
        if canonicalize_name(target.package) == name and target.torch.name == torch.name:
            archs = target.cuda_archs
            break
    flavour = label["flavour"] if label else None
    default_flavour = recipe.flavours[0] if recipe and recipe.flavours else None
    return Expectation(
        package=str(name),
        version=version.public,
        torch=torch,
        python=python,
        cuda_archs=archs,
        extension_modules=recipe.extension_modules if recipe else (),
        flavour=flavour if flavour is not None else default_flavour,  # type: ignore[arg-type]
        default_flavour=default_flavour,
        label_required=not (recipe and recipe.prebuilt),
    )


def _torch_for_label(wheel: Path, label: dict | None, name: str, opts: AbiOptions) -> TorchBuild:
    if opts.torch:
        return opts.torch_builds[opts.torch]
    if label is None:
        raise ConfigError(
            f"Cannot tell which torch {wheel.name} is for: it has no label of this pipeline (+cuXXXtorchX.Y)",
            fix=f"pass --torch with one of: {', '.join(sorted(opts.torch_builds))}",
        )
    fits = [
        b
        for b in opts.torch_builds.values()
        if b.source == "index"
        and b.cuda == label["cuda"]
        and ".".join((b.version or "").split(".")[:2]) == label["torch"]
    ]
    preferred = [
        b
        for b in fits
        if any(t.torch.name == b.name and canonicalize_name(t.package) == name for t in opts.targets.values())
    ]
    chosen = preferred or fits
    if len(chosen) >= 1:
        return chosen[0]
    raise ConfigError(
        f"{wheel.name} says it was built for torch {label['torch']} with CUDA {label['cuda']}, and no torch build of "
        f"{opts.matrix_path} is that",
        fix=f"pass --torch with one of: {', '.join(sorted(opts.torch_builds))} (or add the build to the matrix)",
    )


def plan_jobs(opts: AbiOptions, wheelhouse: Wheelhouse) -> list[Job]:
    records = wheelhouse.records()
    by_file = {r.filename: r for r in records.values()}
    jobs = []
    if opts.wheels:
        for wheel in opts.wheels:
            record = by_file.get(wheel.name)
            if record is not None and wheel.resolve().parent == wheelhouse.root.resolve():
                expect = _apply_overrides(expectation_for_record(record, opts), opts)
                own = not _overridden(opts)
            else:
                record = None
                expect = _apply_overrides(expectation_for_file(wheel, opts), opts)
                own = False
            jobs.append(Job(wheel, expect, record if own else None, _report_path(wheel, wheelhouse, opts, own)))
        return jobs
    if not records:
        raise ConfigError(
            f"The wheelhouse {wheelhouse.root} has no recorded wheels: nothing to check",
            fix="build some with `nox -s wheels`, or name wheel files: `nox -s abi -- path/to/x.whl`",
        )
    for record in records.values():
        wheel = wheelhouse.wheel_path(record)
        expect = _apply_overrides(expectation_for_record(record, opts), opts)
        own = not _overridden(opts)
        jobs.append(Job(wheel, expect, record if own else None, _report_path(wheel, wheelhouse, opts, own)))
    return jobs


def _report_path(wheel: Path, wheelhouse: Wheelhouse, opts: AbiOptions, own: bool) -> Path:
    """A record's own report, or ``<wheel>.abi[.<torch build>].json`` in --report-dir (default: beside the wheel)."""
    own_report = wheelhouse.reports / f"{wheel.name}.abi.json"
    if own:
        return own_report
    folder = opts.report_dir or wheel.parent / REPORTS
    path = folder / f"{wheel.name}.abi{'.' + opts.torch if opts.torch else ''}.json"
    if path.resolve() == own_report.resolve():
        path = folder / f"{wheel.name}.abi.override.json"  # never over a record's own report
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Running


def damaged_report(job: Job, why: str) -> GateReport:
    import datetime

    return GateReport(
        wheel=job.wheel.name,
        checks=[
            CheckResult(
                name="integrity",
                passed=False,
                summary=why,
                problems=[why],
                cause="the file changed or vanished after it was recorded",
                fix="rebuild it with `nox -s wheels` (the record is then replaced)",
            )
        ],
        torch=None,
        checked_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        expectation=job.expect.as_record(),
    )


def run_job(job: Job, opts: AbiOptions, wheelhouse: Wheelhouse) -> GateReport:
    if job.record is not None and not job.wheel.exists():
        report = damaged_report(job, f"{job.wheel} is missing")
    elif job.record is not None and sha256_file(job.wheel) != job.record.sha256:
        report = damaged_report(job, f"{job.wheel.name} does not match its record's sha256")
    else:
        report = check_wheel(job.wheel, job.expect, system_python=opts.system_python, keep_env=opts.keep_envs)
    data = report.to_dict()
    if job.record is not None:
        gate = {
            "verdict": report.verdict,
            "report": f"{REPORTS}/{job.wheel.name}.abi.json",
            "checked_at": report.checked_at,
            "platform_tag": report.platform_tag,
        }
        wheelhouse.update_gate(job.record.target, gate, data)
    else:
        atomic_write_json(job.report_path, data)
    log.info(f"report: {job.report_path}")
    return report


def main(opts: AbiOptions) -> int:
    wheelhouse = Wheelhouse(opts.wheelhouse)
    jobs = plan_jobs(opts, wheelhouse)
    reports = []
    for job in jobs:
        reports.append(run_job(job, opts, wheelhouse))
    if opts.as_json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    failed = [r for r in reports if not r.passed]
    width = max(len(r.wheel) for r in reports)
    log.info(f"ABI gate: {len(reports) - len(failed)} of {len(reports)} wheel(s) pass")
    for r in reports:
        what = "pass" if r.passed else "FAIL: " + ", ".join(c.name for c in r.failures())
        log.info(f"  {r.wheel:<{width}}  {what}")
    if failed:
        raise GateError(
            f"{len(failed)} of {len(reports)} wheel(s) failed the ABI gate: {', '.join(r.wheel for r in failed)}",
            fix="read each wheel's report above; the JSON reports say the same, in full",
        )
    return 0


def cli(argv: list[str]) -> int:
    return main(resolve(argv, os.environ))
