"""Benchmarks: ``python -m wheels bench [SUITE ...]`` (``nox -s bench``) measures, then appends to bench/results.md
(a table per run, for people) and bench/results.json (every run, for programs).

A suite is a module with ``run(ctx: Context) -> SuiteResult`` registered in :data:`SUITES`; adding mmcv, flash-attn
or a GPU suite is adding a module and a line. Targets a suite checks (e.g. "no-op rerun under 10 s") are recorded as
met or missed, never asserted: speed is measured here, not in tests.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .. import log
from ..errors import ConfigError, unknown
from ..options import REPO_ROOT, resolve
from .results import Context, SuiteResult, append_run, machine_info, new_run

# suite -> "module:function" (imported only when run), with a one-line description for --list.
SUITES: dict[str, tuple[str, str]] = {
    "canary": (
        "wheels.bench.canary:run",
        "canary-cu124 through `nox -s wheels`: cold build, no-op rerun, rebuild after a kernel edit",
    ),
    "container": (
        "wheels.bench.container:run",
        "canary-cu124 through the container backend (cibuildwheel): cold, no-op rerun, warm compiler cache",
    ),
    "container-mmcv": (
        "wheels.bench.container:run_mmcv",
        "mmcv-cu124 through the container backend: cold (about an hour on 2 cores), no-op rerun, warm compiler cache",
    ),
}
DEFAULT_SUITES = ("canary",)
RESULTS_DIR = REPO_ROOT / "bench"


def _suite(name: str) -> Callable[[Context], SuiteResult]:
    module, func = SUITES[name][0].split(":")
    return getattr(importlib.import_module(module), func)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nox -s bench --", description="Run benchmark suites; append their results.")
    parser.add_argument("suites", nargs="*", help=f"suites to run (default: {' '.join(DEFAULT_SUITES)})")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results.md/.json live")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (_, description) in SUITES.items():
            print(f"{name:<12} {description}")
        return 0
    names = args.suites or list(DEFAULT_SUITES)
    for name in names:
        if name not in SUITES:
            raise unknown("bench suite", name, SUITES, "the command line")
    # The pipeline's own settings (matrix, cache folder) decide where toolkits and environments are shared from.
    opts = resolve([], env)
    machine = machine_info()
    log.info(
        f"bench on {machine['cores']} cores, {machine['ram_bytes'] / 2**30:.1f} GiB RAM "
        f"(load average {machine['load_average'][0]:.1f}): {', '.join(names)}"
    )
    missed: list[str] = []
    for name in names:
        ctx = Context(suite=name, options=opts, env=env, machine=machine)
        started = datetime.datetime.now(datetime.UTC)
        with log.step(f"bench suite {name}"):
            result = _suite(name)(ctx)
        run = new_run(ctx, result, now=started)
        md, js = append_run(run, args.results_dir)
        log.info(f"bench {name}: results appended to {md} and {js}")
        for check in run["checks"]:
            log.info(
                f"bench {name}: target {check['name']}: {'met' if check['met'] else 'MISSED'} ({check['value']:.1f} s)"
            )
            if not check["met"]:
                missed.append(f"{name}: {check['name']}")
    if missed:
        log.warn("targets missed (recorded, not failed): " + "; ".join(missed))
    return 0


def cli(argv: list[str]) -> int:
    try:
        return main(argv, os.environ)
    except SystemExit as e:  # argparse's --help and usage errors
        if e.code not in (0, None):
            raise ConfigError(
                "Bad arguments for `python -m wheels bench`", fix="see `nox -s bench -- --help`"
            ) from None
        return 0
