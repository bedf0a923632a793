"""The container backend: one target built by cibuildwheel inside the builder image, handed back to the Pipeline.

    builder image (present with a matching recipe, else built)  ->  local wheel index (downloaded once)
    ->  build folder: src/<project> + support/ (the wheels package, constraints, what the test expects)
    ->  cibuildwheel: before-build (torch + tools from the index) -> build -> repair (relabel, auditwheel) ->
        test (the gate's checks in a fresh environment in the container)
    ->  back on the host: the wheel, what the container's torch reported, the compiler cache's hit rate

The Pipeline then gates the wheel again on the host and records it, exactly as for the local backend.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import log
from ..abi.gate import Expectation
from ..build import (
    NEVER_GRAFT,
    REPRODUCIBLE_EPOCH,
    Built,
    Pipeline,
    ccache_stats,
    check_built_name,
    check_not_grafted,
    error_excerpt,
    explain_build_failure,
    platform_tag_of,
    run_build,
)
from ..builder.image import BuilderSpec, builder_spec, docker_client, ensure_image, tools_dir
from ..envs import CONSTRAINTS
from ..errors import BuildError, ConfigError
from ..jobs import JobPlan, plan_after_oom, plan_jobs
from ..label import check_torch_matches, local_label
from ..options import REPO_ROOT
from ..progress import NinjaProgress
from ..toolchain import Toolchain
from ..util import atomic_write_json, available_memory_bytes, cpu_count
from . import config
from .incontainer import expectation_to_json, torch_from_build_info
from .index import IndexSpec, ensure_index, requirements_for, torch_in_index

if TYPE_CHECKING:
    from ..build import Context

PYPROJECT = REPO_ROOT / "pyproject.toml"
RUN_LABEL = "org.steadydancer.wheels.run"


def build_in_container(
    pipeline: Pipeline, ctx: Context, source: Path, toolchain: Toolchain, tree: Path, expect: Expectation
) -> Built:
    opts, env = pipeline.opts, pipeline.env
    target, recipe = ctx.target, ctx.recipe
    if importlib.util.find_spec("cibuildwheel") is None:
        raise ConfigError("The container backend needs cibuildwheel", fix="run it through `nox -s wheels`")

    spec = builder_spec(opts.builder_image, opts.builder_base, ctx.toolchain_plan)
    image_id = ensure_image(spec, toolchain, opts.cache_dir, env)
    index = ensure_index(
        opts.cache_dir,
        IndexSpec(target.torch, requirements_for(recipe.requirements), target.python, CONSTRAINTS.read_text()),
        opts.system_python,
    )
    forecast = torch_in_index(index)
    check_torch_matches(target, forecast)
    label = local_label(forecast, target.flavour, expect.default_flavour)

    work = tree / "cibw"  # what cibuildwheel copies into the container as /project
    src = Pipeline._prepare_tree(work, source, target, recipe)
    _stage_support(work / "support", expect, [target.torch.requirement, *recipe.requirements])
    out, meta = tree / "wheelhouse", tree / "meta"
    for folder in (out, meta):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    ccache_dir = opts.cache_dir / "ccache"
    uv_cache = opts.cache_dir / "container" / "uv-cache"
    for folder in (ccache_dir, uv_cache):
        folder.mkdir(parents=True, exist_ok=True)
    mounts = config.Mounts(wheels=index, ccache=ccache_dir, uv_cache=uv_cache, meta=meta)

    plan = plan_jobs(
        cores=cpu_count(),
        available_bytes=available_memory_bytes(),
        mem_per_job_gib=recipe.mem_per_job_gib,
        n_archs=len(target.cuda_archs),
        max_jobs=opts.max_jobs,
        nvcc_threads=opts.nvcc_threads,
    )
    run = _run_cibuildwheel(pipeline, ctx, spec, mounts, out, label, plan, work, src, tree)
    return _collect(ctx, expect, spec, image_id, out, meta, label, run, opts.cache_dir)


@dataclasses.dataclass
class _Run:
    plan: JobPlan
    attempts: int
    progress: NinjaProgress


def _run_cibuildwheel(
    pipeline: Pipeline, ctx: Context, spec: BuilderSpec, mounts: config.Mounts, out: Path, label: str,
    plan: JobPlan, work: Path, src: Path, tree: Path,
) -> _Run:
    """cibuildwheel, with fewer jobs after a kill for memory (as the local backend does); its log is kept."""
    opts, env = pipeline.opts, pipeline.env
    target, recipe, tag = ctx.target, ctx.recipe, f"[{ctx.target.name}]"
    meta = mounts.meta
    docker = docker_client(env)
    run_id = uuid.uuid4().hex[:12]
    attempts = 0
    total_units = recipe.compile_units(src, target)
    try:
        while True:
            attempts += 1
            log.info(f"{tag} jobs: MAX_JOBS={plan.jobs} NVCC_THREADS={plan.nvcc_threads} ({plan.reason})")
            compile_env = config.compile_environment(
                cuda=ctx.cuda,
                arch_list=target.arch_list,
                jobs=plan.env(),
                recipe_env=recipe.build_env(target, plan, label),
                epoch=env.get("SOURCE_DATE_EPOCH", REPRODUCIBLE_EPOCH),
                ccache_maxsize=env.get("CCACHE_MAXSIZE", "20G"),
            )
            cibw = config.cibw_environment(
                image=spec.tag, python=target.python, mounts=mounts, compile_env=compile_env, never_graft=NEVER_GRAFT
            )
            # Every container of this run carries a label, so an interrupted run can remove what it left.
            cibw["CIBW_CONTAINER_ENGINE"] += f" --label={RUN_LABEL}={run_id}"
            run_env = _host_env(env, docker, tree) | cibw
            cmd = [sys.executable, "-m", "cibuildwheel", "--config-file", str(PYPROJECT), "--output-dir", str(out),
                   str(src.relative_to(work))]
            log_path = tree / f"cibuildwheel-{attempts}.log"
            (meta / "ccache-stats.log").unlink(missing_ok=True)
            progress = NinjaProgress(f"{tag} compiling in {spec.tag}", expected=total_units)
            identifier = config.build_identifier(target.python)
            with log.step(f"{tag} cibuildwheel {identifier} in {spec.tag} (log: {log_path})"):
                rc, _, _, oom = run_build(cmd, run_env, work, log_path, progress)
                if rc == 0:
                    break
                text = log_path.read_text(errors="replace")
                if oom:
                    plan = plan_after_oom(plan, tag, kept="compiled objects are in the compiler cache",
                                          where=" in the container")
                    continue
                raise BuildError(
                    f"{tag} cibuildwheel failed (exit {rc})\n--- from {log_path} ---\n{error_excerpt(text)}\n---",
                    why=explain_build_failure(text) or _container_failure(meta),
                    fix=f"read {log_path}; compiled objects are kept in the compiler cache, so a rerun is quicker",
                )
    finally:
        _remove_containers(docker, run_id, env)
    # The build tree goes once the wheel is recorded; cibuildwheel's log (its steps, with timings) is kept.
    logs = opts.cache_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shutil.copy2(log_path, logs / f"{target.name}.cibuildwheel.log")
    return _Run(plan, attempts, progress)



def _collect(
    ctx: Context, expect: Expectation, spec: BuilderSpec, image_id: str, out: Path, meta: Path, forecast_label: str,
    run: _Run, cache_dir: Path,
) -> Built:
    """Read what the container left (the wheel, build-info.json, gate.json, the ccache log) and check it."""
    target, tag = ctx.target, f"[{ctx.target.name}]"
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"{tag} cibuildwheel left {len(wheels)} wheels in {out}, expected one")
    wheel = wheels[0]
    info = json.loads((meta / "build-info.json").read_text())
    torch = torch_from_build_info(info)
    check_torch_matches(target, torch)
    label = local_label(torch, target.flavour, expect.default_flavour)
    version = f"{target.version}+{label}"
    if label != forecast_label:
        raise BuildError(
            f"{tag} the container's torch {torch.version} gives the label {label}; its wheel said {forecast_label}",
            fix=f"delete the container wheel index under {cache_dir / 'container' / 'index'} and rebuild",
        )
    check_built_name(wheel, target)
    from packaging.utils import parse_wheel_filename

    if str(parse_wheel_filename(wheel.name)[1]) != version:
        raise BuildError(f"{tag} {wheel.name} is not labelled {version}, as the container's torch says it should be")
    check_not_grafted(wheel)
    gate = json.loads((meta / "gate.json").read_text())
    stats: dict[str, Any] = {
        "jobs": run.plan.jobs,
        "nvcc_threads": run.plan.nvcc_threads,
        "attempts": run.attempts,
        "peak_rss_bytes": None,  # the compilers ran in the container; this host's process tree does not show them
        "max_process_rss_bytes": None,
        "compile_units": run.progress.total,
        "compiler_cache": ccache_stats(tools_dir(cache_dir, spec.tools) / "ccache", meta / "ccache-stats.log"),
        "container": {
            "image": spec.tag,
            "image_id": image_id,
            "base": spec.base,
            "glibc": info.get("glibc"),
            "test": {"verdict": gate.get("verdict"), "checks": [c["name"] for c in gate.get("checks", [])]},
        },
    }
    cache = stats["compiler_cache"]
    if cache:
        log.info(f"{tag} compiler cache: {cache['hits']} hits, {cache['misses']} misses "
                 f"({cache['hit_rate']:.0%} hit rate)")
    else:
        log.warn(f"{tag} the container left no compiler cache statistics ({meta / 'ccache-stats.log'})")
    log.info(f"{tag} container test ({gate.get('verdict')}): {', '.join(stats['container']['test']['checks'])}; "
             f"platform tag {platform_tag_of(wheel)} (base glibc {info.get('glibc')})")
    toolchain = {
        "nvcc": info.get("nvcc") or "",
        "host_cxx": info.get("host_cxx") or "",
        **{k: str(v) for k, v in spec.identity().items()},
        **({"toolkit_recipe": spec.toolkit["toolkit_recipe"]} if "toolkit_recipe" in spec.toolkit else {}),
    }
    return Built(wheel, torch, label, version, platform_tag_of(wheel), stats, toolchain)


def _stage_support(folder: Path, expect: Expectation, build_requirements: list[str]) -> None:
    """support/: the wheels package (the in-container steps run it), the pin set, and what the test expects."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(
        REPO_ROOT / "wheels",
        folder / "wheels",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "dist", "*.egg-info"),
    )
    shutil.copy2(CONSTRAINTS, folder / "constraints.txt")
    atomic_write_json(folder / "expect.json", expectation_to_json(expect))
    (folder / "build-requirements.txt").write_text("\n".join(build_requirements) + "\n")
    (folder / "uv.toml").write_text(config.uv_config())
    # The test step's installs: the wheel and the test requirements without dependencies, as the gate installs it
    # (the runtime is torch alone, which before-test installs first, with its own dependencies, under uv.toml).
    (folder / "uv-test.toml").write_text(config.uv_config(no_deps=True))


def _host_env(env: Mapping[str, str], docker: str, tree: Path) -> dict[str, str]:
    """The environment cibuildwheel runs in: ours, with `docker` on PATH meaning the client the pipeline chose."""
    out = {k: v for k, v in env.items() if not k.startswith("CIBW_")}  # only this backend configures cibuildwheel
    shim = tree / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    link = shim / "docker"
    link.unlink(missing_ok=True)
    link.symlink_to(docker)
    out["PATH"] = f"{shim}{os.pathsep}{out.get('PATH', os.defpath)}"
    return out


def _container_failure(meta: Path) -> str | None:
    gate = meta / "gate.json"
    if gate.exists():
        report = json.loads(gate.read_text())
        failed = [f"{c['name']}: {'; '.join(c['problems'][:3])}" for c in report.get("checks", []) if not c["passed"]]
        if failed:
            return "the wheel failed the gate's checks in the container: " + " | ".join(failed)
    return None


def _remove_containers(docker: str, run_id: str, env: Mapping[str, str]) -> None:
    """cibuildwheel removes its container when it ends normally; after a kill, this does."""
    found = subprocess.run(
        [docker, "ps", "--all", "--quiet", "--filter", f"label={RUN_LABEL}={run_id}"],
        capture_output=True, text=True, env=dict(env),
    ).stdout.split()
    if found:
        log.info(f"removing {len(found)} container(s) this run left behind")
        subprocess.run([docker, "rm", "--force", "--volumes", *found], capture_output=True, env=dict(env))
