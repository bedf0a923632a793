"""The container suites: `nox -s wheels -- --backend container TARGET`, measured end to end (``container``:
canary-cu124, minutes; ``container-mmcv``: mmcv-cu124, about an hour cold on 2 cores).

1. cold: an empty compiler cache (the builder image, the container's wheel index and its uv cache, one-time setup,
   are reused when there; the notes say which had to be made first, outside the measurement);
2. no-op rerun: the same command; the key is built, so no container may start (target: under 10 s);
3. warm: the same build again (--force) with the compiler cache the cold step filled.

Every step is the whole `python -m nox -s wheels -- --backend container canary-cu124` command from the repository
root, into a temporary wheelhouse and cache (sharing the pipeline cache's toolkit, downloads, builder files and
container index). Where the builder's base image is not present and cannot be pulled (machines without registry
access, like ours), the builder is made on the Debian stand-in base (`python -m wheels builder --standin`), and the
notes say so: its wheels are tagged for glibc 2.36, not manylinux_2_28.

The compilers run in the container, children of the Docker engine rather than of this command: the peak RSS of the
command's own process tree would not show them, so none is reported for these steps.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .. import log, util
from ..builder.image import docker_client, inspect_image
from ..builder.standin import DEFAULT_TAG as STANDIN_TAG
from ..errors import BuildError
from ..options import REPO_ROOT
from .results import Check, Context, Measurement, SuiteResult
from .steps import Workspace, run_step, step_env

NOOP_LIMIT_SECONDS = 10.0
SHARED = ("toolkits", "downloads", "builder", "container")  # one-time setup, shared with the pipeline's own cache


def _measure(
    step: str, target: str, cmd: list[str], env: dict[str, str], wheelhouse: Path, logs: Path
) -> tuple[Measurement, str]:
    # No memory sampling: the compilers run in the container, outside this command's process tree.
    run = run_step("container", step, target, cmd, env, wheelhouse, logs, sample_memory=False)
    record, stats = run.record, run.stats
    container = stats.get("container") or {}
    notes = "nothing built: the record and wheel were left as they were"
    if run.built:
        notes = (f"{record['platform_tag']} (base glibc {container.get('glibc')}); container test "
                 f"{container.get('test', {}).get('verdict')}, host gate {record['gate']['verdict']}")
    return Measurement(
        step=step,
        target=target,
        command="nox -s wheels -- --backend container " + target + (" --force" if "--force" in cmd else ""),
        wall_seconds=run.wall_seconds,
        peak_rss_bytes=None,
        jobs=stats.get("jobs"),
        wheel_size=record["size"],
        sha256=record["sha256"],
        cache=stats.get("compiler_cache"),
        built=run.built,
        notes=notes,
    ), run.output


def _builder_base(ctx: Context, env: dict[str, str], notes: list[str]) -> str:
    """The configured base when it is present locally; else the Debian stand-in (imported when absent)."""
    docker = docker_client(env)
    base = ctx.options.builder_base
    if inspect_image(docker, base, env) is not None:
        notes.append(f"builder base: {base}")
        return base
    notes.append(f"builder base: the Debian bookworm stand-in ({STANDIN_TAG}); {base} is not present locally")
    if inspect_image(docker, STANDIN_TAG, env) is None:
        notes.append("the stand-in base was imported first (not measured)")
    return STANDIN_TAG


def run(ctx: Context) -> SuiteResult:
    return _run(ctx, "canary-cu124")


def run_mmcv(ctx: Context) -> SuiteResult:
    return _run(ctx, "mmcv-cu124")


def _run(ctx: Context, target: str) -> SuiteResult:
    notes: list[str] = []
    env_base = step_env(ctx.env)
    base = _builder_base(ctx, env_base, notes)
    with tempfile.TemporaryDirectory(prefix="wheels-bench-container-") as tmp:
        space = Workspace.make(Path(tmp), ctx.options.cache_dir, SHARED)
        wheelhouse, logs = space.wheelhouse, space.logs
        env = {**env_base, "WHEELHOUSE": str(wheelhouse), "WHEELS_CACHE_DIR": str(space.cache),
               "WHEELS_BUILDER_BASE": base}
        cmd = [sys.executable, "-m", "nox", "-s", "wheels", "--", "--backend", "container", target]

        # Not measured: nox's session environment, and the one-time setup (stand-in base, builder image, the
        # container's wheel index and uv cache) that a warm machine already has.
        with log.step("bench container: one-time setup (not measured)"):
            builder = [sys.executable, "-m", "wheels", "builder", target]
            if base == STANDIN_TAG:
                builder.append("--standin")
            util.run(builder, cwd=REPO_ROOT, env=env, error=BuildError, what="python -m wheels builder")
            util.run([*cmd, "--list"], cwd=REPO_ROOT, env=env, error=BuildError, what="nox -s wheels -- --list")
        notes.append(
            "the toolkit, builder files and the container's wheel index and uv cache were reused"
            if not space.missing
            else f"cold also set up what the cache lacked: {', '.join(space.missing)}"
        )
        cold, _ = _measure("cold: empty compiler cache", target, cmd, env, wheelhouse, logs)
        noop, output = _measure("no-op rerun", target, cmd, env, wheelhouse, logs)
        if noop.built or f"{target}: up to date" not in output:
            raise BuildError("bench container: the rerun was not a no-op", fix=f"read the logs in {logs}")
        warm, _ = _measure("warm compiler cache (--force rebuild)", target, [*cmd, "--force"], env, wheelhouse, logs)
        if not warm.built:
            raise BuildError("bench container: --force did not rebuild", fix=f"read the logs in {logs}")
    notes.append(f"load average at the end {os.getloadavg()[0]:.2f} (other builds share these cores)")
    return SuiteResult(
        measurements=[cold, noop, warm],
        checks=[Check(f"no-op rerun under {NOOP_LIMIT_SECONDS:.0f} s", NOOP_LIMIT_SECONDS, noop.wall_seconds)],
        notes=notes,
    )
