"""The canary suite: what a user waits for with `nox -s wheels -- canary-cu124`, measured end to end.

1. cold: an empty compiler cache and a fresh build tree (the toolkit and the build environment, one-time setup, are
   reused from the pipeline's cache when there; the notes say whether they were);
2. no-op rerun: the same command again; the key is built, so nothing may compile (target: under 10 s, nox's own
   startup included);
3. rebuild after editing the kernel (csrc/saxpy.cu) with the compiler cache warm: only that unit may recompile.

Every step is the whole `python -m nox -s wheels -- canary-cu124` command, run from the repository root, on a copy
of the canary's source (the checkout is never edited) and a temporary wheelhouse; WHEELS_MATRIX points the pipeline
at a one-target matrix for that copy, which is what makes the edit possible.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import log, sources, util
from ..errors import BuildError
from ..options import REPO_ROOT, Target
from .results import Check, Context, Measurement, SuiteResult
from .steps import Workspace, run_step, step_env

TARGET = "canary-cu124"
NOOP_LIMIT_SECONDS = 10.0
SHARED = ("toolkits", "downloads", "envs")  # one-time setup, shared with the pipeline's own cache
# A real edit (new code, not a comment: the preprocessor would erase a comment and the compiler cache would hit).
KERNEL_EDIT = (
    "\n// bench: an edit to the kernel source\n__device__ float canary_bench_edit(float v) {{ return v * {n}.f; }}\n"
)


def _matrix_text(target: Target, source: Path) -> str:
    """A one-target matrix for the copy. Strings are JSON-quoted, which is valid TOML for these plain values."""
    t, torch = target, target.torch
    return "\n".join(
        [
            "# Written by the canary benchmark: its copy of the canary's source, built like the real target.",
            "schema = 1",
            "",
            f"[torch.{torch.name}]",
            f"version = {json.dumps(torch.version)}",
            f"cuda = {json.dumps(torch.cuda)}",
            f"index-url = {json.dumps(torch.index_url)}",
            "",
            f"[targets.{t.name}]",
            f"package = {json.dumps(t.package)}",
            f"version = {json.dumps(t.version)}",
            f"recipe = {json.dumps(t.recipe)}",
            f"source = {{ path = {json.dumps(str(source))} }}",
            f"torch = {json.dumps(torch.name)}",
            f"python = {json.dumps(t.python)}",
            f"cuda-archs = {json.dumps(t.arch_list)}",
            "",
        ]
    )


def _measure(step: str, cmd: list[str], env: dict[str, str], wheelhouse: Path, logs: Path) -> tuple[Measurement, str]:
    run = run_step("canary", step, TARGET, cmd, env, wheelhouse, logs, sample_memory=True)
    return Measurement(
        step=step,
        target=TARGET,
        command="nox -s wheels -- " + TARGET,
        wall_seconds=run.wall_seconds,
        peak_rss_bytes=run.peak_rss_bytes,
        jobs=run.stats.get("jobs"),
        wheel_size=run.record["size"],
        sha256=run.record["sha256"],
        cache=run.stats.get("compiler_cache"),
        built=run.built,
        notes="" if run.built else "nothing built: the record and wheel were left as they were",
    ), run.output


def run(ctx: Context) -> SuiteResult:
    target = ctx.options.targets[TARGET]
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="wheels-bench-canary-") as tmp:
        work = Path(tmp)
        space = Workspace.make(work, ctx.options.cache_dir, SHARED)
        notes.append(
            "cold step "
            + (
                f"also set up what the cache lacked: {', '.join(space.missing)}"
                if space.missing
                else "reused the cached toolkit and build environment"
            )
        )
        source = work / "canary"
        shutil.copytree(
            sources.source_dir(target),
            source,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
        )
        matrix = work / "matrix.toml"
        matrix.write_text(_matrix_text(target, source))
        wheelhouse, logs = space.wheelhouse, space.logs
        env = {
            **step_env(ctx.env),
            "WHEELS_MATRIX": str(matrix),
            "WHEELHOUSE": str(wheelhouse),
            "WHEELS_CACHE_DIR": str(space.cache),
        }
        cmd = [sys.executable, "-m", "nox", "-s", "wheels", "--", TARGET]

        # Not measured: nox creates (or updates) the session's own environment, which no rebuild repeats.
        with log.step("bench canary: preparing the `nox -s wheels` session (not measured)"):
            util.run([*cmd, "--list"], cwd=REPO_ROOT, env=env, error=BuildError, what="nox -s wheels -- --list")
        cold, _ = _measure("cold: empty compiler cache", cmd, env, wheelhouse, logs)
        noop, output = _measure("no-op rerun", cmd, env, wheelhouse, logs)
        if noop.built or f"{TARGET}: up to date" not in output:
            raise BuildError("bench canary: the rerun was not a no-op", fix=f"read the logs in {logs}")
        kernel = source / "csrc" / "saxpy.cu"
        kernel.write_text(kernel.read_text() + KERNEL_EDIT.format(n=int(time.time())))
        edit, _ = _measure("rebuild after editing csrc/saxpy.cu, warm compiler cache", cmd, env, wheelhouse, logs)
        if not edit.built:
            raise BuildError(
                "bench canary: editing the kernel did not rebuild the wheel", fix=f"read the logs in {logs}"
            )
    return SuiteResult(
        measurements=[cold, noop, edit],
        checks=[Check(f"no-op rerun under {NOOP_LIMIT_SECONDS:.0f} s", NOOP_LIMIT_SECONDS, noop.wall_seconds)],
        notes=notes,
    )
