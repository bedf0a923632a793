"""The pipeline: for each selected target, key -> skip or (source, toolchain, env, build, label, repair, gate, record).

Each step is logged with its duration; each leaves something checkable (a cached source, a toolkit, an environment,
a build tree, a wheel, a gate report, a record).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import log, sources
from .abi.gate import Expectation, GateReport, check_wheel
from .cachekey import cache_key, key_inputs
from .envs import PythonEnv, TorchInfo, cached_env
from .errors import BuildError, ConfigError, GateError, PipelineError, ToolchainError
from .jobs import JobPlan, plan_after_oom, plan_jobs
from .label import check_torch_matches, local_label
from .manifest import Record, Wheelhouse
from .options import Options, Target
from .progress import NinjaProgress
from .recipes import RECIPES, Recipe
from .toolchain import Plan, Toolchain, Toolchains
from .util import TreeMemorySampler, available_memory_bytes, cpu_count, run, sha256_file
from .wheelfile import rewrite

# Libraries that must never be grafted into our wheels: torch brings them at run time.
NEVER_GRAFT = (
    "libtorch*.so*",
    "libc10*.so*",
    "libshm*.so*",
    "libcuda.so*",
    "libcudart.so*",
    "libcublas*.so*",
    "libcusparse*.so*",
    "libcusolver*.so*",
    "libcurand*.so*",
    "libcufft*.so*",
    "libnvrtc*.so*",
    "libnvToolsExt*.so*",
    "libnvJitLink*.so*",
    "libcudnn*.so*",
    "libnccl*.so*",
    "libgomp*.so*",
    "libpython*.so*",
)

REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip entry can carry

_OOM_PATTERNS = re.compile(
    r"Killed signal terminated program|died due to signal 9|signal 9 \(Kill signal\)|"
    r"fatal error: Killed|std::bad_alloc|virtual memory exhausted|Cannot allocate memory|out of memory allocating",
)


@dataclasses.dataclass
class Context:
    """One target, resolved: its recipe, toolchain plan and cache key (None when no toolchain is available)."""

    target: Target
    recipe: Recipe
    cuda: str
    python: str
    torch_identity: dict[str, Any]
    toolchain_plan: Plan
    inputs: dict[str, Any] | None
    key: str | None
    state: str
    record: Record | None


# Prebuilt (upstream) wheels need no compiler: a plan that is always "available".
PREBUILT_PLAN = Plan(cuda="", nvcc_version="not needed", how="not needed: an upstream wheel, checked, not built")


class Pipeline:
    def __init__(self, opts: Options, env: Mapping[str, str]) -> None:
        self.opts = opts
        self.env = env
        self.toolchains = Toolchains(opts.cache_dir, env)
        self.wheelhouse = Wheelhouse(opts.wheelhouse)
        self._system_torch: TorchInfo | None = None

    # -----------------------------------------------------------------------------------------------------------------
    # Resolution (cheap: no downloads, no compiles)

    def system_torch(self) -> TorchInfo:
        if self._system_torch is None:
            from .envs import _TORCH_PROBE  # one probe for every torch

            exe = shutil.which(self.opts.system_python) or self.opts.system_python
            out = run([exe, "-c", _TORCH_PROBE], what=f"Asking {exe} for its torch")
            info = json.loads(out.stdout.strip().splitlines()[-1])
            if "error" in info:
                raise ToolchainError(
                    f"The system torch build needs torch in {exe}, but it does not import: {info['error']}",
                    fix="point --system-python (WHEELS_SYSTEM_PYTHON) at the interpreter that has torch",
                )
            self._system_torch = TorchInfo(
                info["version"], info["cuda"], info["cxx11_abi"], Path(info["lib"]), info["python"], info["python_tag"]
            )
        return self._system_torch

    def resolve(self, target: Target) -> Context:
        recipe = RECIPES[target.recipe]
        if target.torch.source == "system":
            info = self.system_torch()
            if info.cuda is None:
                raise ToolchainError(f"The system torch {info.version} is a CPU build; {target.name} needs CUDA")
            cuda, python = info.cuda, info.python
            torch_identity = {"build": "system", **info.as_record()}
        else:
            assert target.torch.cuda
            cuda, python = target.torch.cuda, target.python
            torch_identity = {"build": target.torch.name, "version": target.torch.version, "cuda": cuda}
        plan = PREBUILT_PLAN if recipe.prebuilt else self.toolchains.plan(cuda)
        inputs = key = None
        if plan.nvcc_version is not None:
            inputs = key_inputs(
                target,
                source_hash=sources.source_hash(target),
                toolchain={} if recipe.prebuilt else self.toolchain_identity(plan),
                torch=torch_identity,
                python=python,
                backend=self.opts.backend,
            )
            key = cache_key(inputs)
            state, record = self.wheelhouse.state(target.name, key)
        else:
            state, record = "no toolchain", self.wheelhouse.record(target.name)
        return Context(target, recipe, cuda, python, torch_identity, plan, inputs, key, state, record)

    def toolchain_identity(self, plan: Plan) -> dict[str, str]:
        """The cache key's view of the compilers. In a container they are the builder image's: its recipe (base,
        toolkit, tools, Dockerfile) stands for them, computable before the image exists (CI keys caches on it)."""
        if self.opts.backend == "container":
            from .builder.image import builder_spec

            identity = plan.identity(host_cxx="")
            identity.pop("host_cxx", None)
            identity.update(builder_spec(self.opts.builder_image, self.opts.builder_base, plan).identity())
            return identity
        return plan.identity(self.toolchains.host_cxx)

    def buildable_elsewhere(self) -> list[str]:
        """Targets of the matrix (not using the system torch) whose CUDA toolkit this machine has or can provision."""
        names = []
        for name, target in self.opts.targets.items():
            if target.torch.source == "index" and target.torch.cuda:
                if RECIPES[target.recipe].prebuilt or self.toolchains.plan(target.torch.cuda).nvcc_version is not None:
                    names.append(name)
        return names

    def check_backend(self, targets: list[Target]) -> None:
        """Targets the chosen backend cannot build, found before anything is resolved."""
        if self.opts.backend == "container":
            system = [t.name for t in targets if t.torch.source == "system"]
            if system:
                raise ConfigError(
                    f"The container backend cannot build {', '.join(system)}: they use this host's own torch",
                    why="in the container, torch and Python come from the builder image and the target's torch index",
                    fix="build them with --backend local, or pick the matching index target (e.g. canary-cu124)",
                )

    def preflight(self, contexts: list[Context]) -> None:
        missing = [c for c in contexts if c.key is None]
        if not missing:
            return
        by_cuda: dict[str, list[str]] = {}
        for c in missing:
            by_cuda.setdefault(c.cuda, []).append(c.target.name)
        cuda, names = next(iter(by_cuda.items()))
        raise self.toolchains.unavailable_error(
            self.toolchains.plan(cuda), names + [n for cu, ns in by_cuda.items() if cu != cuda for n in ns],
            self.buildable_elsewhere(),
        )

    # -----------------------------------------------------------------------------------------------------------------
    # Commands

    def list(self) -> int:
        contexts = [self.resolve(t) for t in self.opts.selected_targets()]
        rows = []
        for c in contexts:
            rows.append(
                {
                    "name": c.target.name,
                    "state": c.state,
                    "cache_key": c.key,
                    "torch": c.target.torch.name,
                    "cuda": c.cuda,
                    "python": c.python,
                    "cuda_archs": list(c.target.cuda_archs),
                    "flavour": c.target.flavour,
                    "toolchain": c.toolchain_plan.how,
                    "wheel": c.record.filename if c.record else None,
                }
            )
        if self.opts.as_json:
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            key = (r["cache_key"] or "-")[:16]
            print(f"{r['name']:<{width}}  {r['state']:<12}  {key:<16}  torch={r['torch']} cuda={r['cuda']} "
                  f"archs={';'.join(r['cuda_archs'])}  toolchain: {r['toolchain']}")
            if r["wheel"]:
                print(f"{'':<{width}}  wheel: {r['wheel']}")
        for extra in self.wheelhouse.untracked():
            print(f"untracked wheel (no record): {extra.name}")
        return 0

    def build_all(self) -> int:
        targets = self.opts.selected_targets()
        if not targets:
            log.info("no targets selected")
            return 0
        self.check_backend(targets)
        with log.step(f"Resolving {len(targets)} target(s): {', '.join(t.name for t in targets)}"):
            contexts = [self.resolve(t) for t in targets]
            self.preflight(contexts)
        failed: list[tuple[str, PipelineError]] = []
        for ctx in contexts:
            name = ctx.target.name
            if ctx.state == "built" and not self.opts.force:
                assert ctx.record
                if self.wheelhouse.verify(ctx.record):
                    log.info(f"{name}: up to date ({ctx.record.filename}, key {ctx.key[:16]}); nothing to do")
                    continue
                log.warn(f"{name}: {ctx.record.filename} does not match its recorded sha256; rebuilding")
            elif ctx.state in ("stale", "damaged"):
                log.info(f"{name}: {ctx.state} ({ctx.record.filename if ctx.record else ''}); rebuilding")
            try:
                self.build_one(ctx)
            except PipelineError as e:
                if len(contexts) > 1:
                    log.warn(f"{name}: {e.render()}")
                failed.append((name, e))
        if len(failed) == 1:
            raise failed[0][1]
        if failed:
            names = ", ".join(n for n, _ in failed)
            raise type(failed[0][1])(f"{len(failed)} targets failed: {names}", fix="see each target's error above")
        return 0

    # -----------------------------------------------------------------------------------------------------------------
    # One target

    def build_one(self, ctx: Context) -> Record:
        target, recipe = ctx.target, ctx.recipe
        assert ctx.key
        started = time.monotonic()
        tag = f"[{target.name}]"
        with log.step(f"{tag} source: {target.source.location}"):
            source = sources.fetch(target, self.opts.cache_dir)
        tree = self.opts.cache_dir / "build" / f"{target.name}-{ctx.key[:16]}"
        expect = self.expectation(target, recipe)
        if recipe.prebuilt:
            return self._record(ctx, self._prebuilt(ctx, source, tree), expect, tree, started)
        toolchain = self.toolchains.get(ctx.cuda)
        log.info(f"{tag} toolchain: nvcc {toolchain.nvcc_version} at {toolchain.cuda_home} ({toolchain.origin}); "
                 f"{toolchain.host_cxx}")
        if self.opts.backend == "container":
            from .container.backend import build_in_container

            built = build_in_container(self, ctx, source, toolchain, tree, expect)
        else:
            built = self._build_local(ctx, source, toolchain, tree)
        return self._record(ctx, built, expect, tree, started)

    def _prebuilt(self, ctx: Context, wheel: Path, tree: Path) -> Built:
        """An upstream wheel: nothing to compile. Its torch is the target's, asked from an environment holding it."""
        target = ctx.target
        env = cached_env(self.opts.cache_dir, kind="runtime", python=target.python,
                         system_python=self.opts.system_python, torch=target.torch, requirements=())
        torch = env.torch_info()
        check_torch_matches(target, torch)
        check_built_name(wheel, target)
        staged = tree / "dist" / wheel.name
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, staged)
        log.info(f"[{target.name}] not built here: upstream's {wheel.name} is checked against torch {torch.version}")
        return Built(wheel=staged, torch=torch, label="", version=target.version, platform_tag=platform_tag_of(wheel),
                     stats={"prebuilt": True, "source": target.source.location}, toolchain={})

    def _record(self, ctx: Context, built: Built, expect: Expectation, tree: Path, started: float) -> Record:
        """Gate the wheel a backend made (or fetched); record it only when it passes."""
        target, tag = ctx.target, f"[{ctx.target.name}]"
        repaired, torch = built.wheel, built.torch

        report = self.gate(repaired, expect, tree)
        if not report.passed:
            failed_dir = self.opts.cache_dir / "failed"
            failed_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repaired, failed_dir / repaired.name)
            (failed_dir / f"{repaired.name}.abi.json").write_text(json.dumps(report.to_dict(), indent=2))
            raise GateError(
                f"{tag} {repaired.name} failed the ABI gate ({', '.join(c.name for c in report.failures())}); "
                "it was not recorded",
                fix=f"read the report above; the wheel and its report are kept in {failed_dir}",
            )
        sha = sha256_file(repaired)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = Record(
            target=target.name,
            filename=repaired.name,
            sha256=sha,
            size=repaired.stat().st_size,
            package=target.package,
            version=built.version,
            label=built.label,
            torch={**torch.as_record(), "build": target.torch.name},
            cuda=torch.cuda or "",
            python_tag=torch.python_tag,
            platform_tag=built.platform_tag,
            cuda_archs=list(target.cuda_archs),
            cxx11_abi=torch.cxx11_abi,
            cache_key=ctx.key,
            flavour=target.flavour,
            toolchain=built.toolchain,
            build={**built.stats, "seconds": round(time.monotonic() - started, 1), "backend": self.opts.backend},
            gate={"verdict": report.verdict, "report": f"reports/{repaired.name}.abi.json", "checked_at": report.checked_at,
                  "platform_tag": report.platform_tag},
            created=now,
        )
        self.wheelhouse.commit(record, repaired, report.to_dict())
        shutil.rmtree(tree, ignore_errors=True)  # objects live on in the compiler cache
        log.info(f"{tag} recorded {record.filename} ({record.size / 1e6:.1f} MB, sha256 {sha[:16]}...) "
                 f"in {log.fmt_seconds(record.build['seconds'])}")
        if built.stats.get("prebuilt"):
            log.info(f"{tag} {target.package} {target.version} is not built by this pipeline: upstream's wheel passes "
                     f"the ABI gate against torch {torch.version}")
        return record

    def expectation(self, target: Target, recipe: Recipe) -> Expectation:
        """What the gate checks a wheel of ``target`` against (here, and in the container's test step)."""
        return Expectation(
            package=target.package,
            version=target.version,
            torch=target.torch,
            python=target.python,
            cuda_archs=target.cuda_archs,
            extension_modules=recipe.extension_modules,
            flavour=target.flavour,
            default_flavour=recipe.flavours[0] if recipe.flavours else None,
            base=self.env.get("WHEELS_IMAGE_BASE") or None,
            label_required=not recipe.prebuilt,
        )

    def _build_local(self, ctx: Context, source: Path, toolchain: Toolchain, tree: Path) -> Built:
        """The local backend: a cached build environment on this machine, then compile, relabel and repair."""
        target, recipe = ctx.target, ctx.recipe
        tag = f"[{target.name}]"
        env = cached_env(
            self.opts.cache_dir,
            kind="build",
            python=target.python,
            system_python=self.opts.system_python,
            torch=target.torch,
            requirements=recipe.requirements,
        )
        torch = env.torch_info()
        check_torch_matches(target, torch)
        default_flavour = recipe.flavours[0] if recipe.flavours else None
        label = local_label(torch, target.flavour, default_flavour)
        version = f"{target.version}+{label}"
        log.info(f"{tag} torch {torch.version} (CUDA {torch.cuda}, C++11 ABI {torch.cxx11_abi}) -> {version}")

        src = self._prepare_tree(tree, source, target, recipe)
        plan = plan_jobs(
            cores=cpu_count(),
            available_bytes=available_memory_bytes(),
            mem_per_job_gib=recipe.mem_per_job_gib,
            n_archs=len(target.cuda_archs),
            max_jobs=self.opts.max_jobs,
            nvcc_threads=self.opts.nvcc_threads,
        )
        staging = tree / "dist"
        shutil.rmtree(staging, ignore_errors=True)
        built, stats = self._compile(ctx, env, toolchain, src, staging, plan, label)

        with log.step(f"{tag} labelling and repairing {built.name}"):
            check_built_name(built, target)
            labelled = rewrite(built, staging / "labelled", version=version)
            repaired, platform_tag = self._repair(env, labelled, staging / "repaired", torch)
        return Built(repaired, torch, label, version, platform_tag, stats, toolchain.identity())

    def gate(self, wheel: Path, expect: Expectation, work: Path) -> GateReport:
        return check_wheel(
            wheel, expect, system_python=self.opts.system_python, keep_env=self.opts.keep_envs, work=work / "gate"
        )

    @staticmethod
    def _prepare_tree(tree: Path, source: Path, target: Target, recipe: Recipe) -> Path:
        """A persistent build tree per cache key: a rerun after a kill resumes, keeping compiled objects."""
        marker = tree / ".prepared"
        if marker.exists():
            src = Path(marker.read_text().strip())
            if src.is_dir():
                log.info(f"[{target.name}] resuming in the existing build tree {src}")
                return src
        with log.step(f"[{target.name}] unpacking into {tree}"):
            src = sources.unpack(source, tree / "src")
            recipe.prepare(src, target)
            marker.write_text(str(src))
        return src

    def _compile_env(
        self, ctx: Context, env: PythonEnv, toolchain: Toolchain, plan: JobPlan, label: str, tree: Path
    ) -> dict[str, str]:
        target = ctx.target
        base = env.environ(self.env)
        out = toolchain.env(base)
        out.update(
            {
                # Reproducible archives: bdist_wheel and auditwheel stamp zip entries with this time.
                "SOURCE_DATE_EPOCH": self.env.get("SOURCE_DATE_EPOCH", REPRODUCIBLE_EPOCH),
                "TORCH_CUDA_ARCH_LIST": target.arch_list,
                "FORCE_CUDA": "1",
                **plan.env(),
                **ctx.recipe.build_env(target, plan, label),
            }
        )
        ccache = env.bin / "ccache"
        if ccache.exists():
            masq = tree / "ccache-bin"
            masq.mkdir(parents=True, exist_ok=True)
            for name in ("c++", "g++"):
                # Re-pointed every run: a resumed tree may hold links into an environment since replaced or deleted.
                link = masq / name
                if not (link.is_symlink() and os.readlink(link) == str(ccache)):
                    fresh = masq / f".{name}.new"
                    fresh.unlink(missing_ok=True)
                    fresh.symlink_to(ccache)
                    os.replace(fresh, link)
            out.update(
                {
                    "CXX": str(masq / "c++"),
                    "PYTORCH_NVCC": f"{ccache} {toolchain.tool('nvcc')}",
                    "CCACHE_DIR": str(self.opts.cache_dir / "ccache"),
                    "CCACHE_BASEDIR": str(self.opts.cache_dir / "build"),
                    "CCACHE_NOHASHDIR": "1",
                    "CCACHE_COMPILERCHECK": "content",
                    "CCACHE_MAXSIZE": self.env.get("CCACHE_MAXSIZE", "20G"),
                    "CCACHE_STATSLOG": str(tree / "ccache-stats.log"),
                    # uv hard-links torch's headers from its cache into every environment, so any install or removal
                    # of torch elsewhere changes their link count, hence their ctime, in mid-compile; ccache would
                    # then refuse to store the object ("modified_input_file"). Content changes still show in mtime.
                    "CCACHE_SLOPPINESS": ",".join(filter(None, [self.env.get("CCACHE_SLOPPINESS"), "include_file_ctime"])),
                }
            )
        else:
            log.warn("ccache is not in the build environment: compiling without a compiler cache")
        return out

    def _compile(
        self, ctx: Context, env: PythonEnv, toolchain: Toolchain, src: Path, staging: Path, plan: JobPlan, label: str
    ) -> tuple[Path, dict[str, Any]]:
        target, recipe = ctx.target, ctx.recipe
        tree = src.parent.parent
        stats_log = tree / "ccache-stats.log"
        stats_log.unlink(missing_ok=True)
        attempts = 0
        total_units = recipe.compile_units(src, target)
        while True:
            attempts += 1
            log.info(f"[{target.name}] jobs: MAX_JOBS={plan.jobs} NVCC_THREADS={plan.nvcc_threads} ({plan.reason})")
            build_env = self._compile_env(ctx, env, toolchain, plan, label, tree)
            cmd = [str(env.python), "-m", "build", "--wheel", "--outdir", str(staging)]
            if recipe.no_isolation:
                cmd.append("--no-isolation")
            cmd.append(str(src))
            log_path = tree / f"build-{attempts}.log"
            progress = NinjaProgress(f"[{target.name}] compiling", expected=total_units)
            with log.step(f"[{target.name}] building (log: {log_path})"):
                rc, peak_tree, peak_proc, oom = run_build(cmd, build_env, src, log_path, progress)
                if rc == 0:
                    break
                text = log_path.read_text(errors="replace")
                if oom:
                    plan = plan_after_oom(plan, f"[{target.name}]", kept="objects already compiled are kept",
                                          peak_tree=peak_tree)
                    continue
                raise BuildError(
                    f"[{target.name}] the build failed (exit {rc})\n--- from {log_path} ---\n{error_excerpt(text)}\n---",
                    why=explain_build_failure(text),
                    fix=f"read {log_path}; the build tree {tree} is kept, so a rerun resumes",
                )
        wheels = sorted(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"[{target.name}] expected one wheel in {staging}, found {len(wheels)}")
        stats = {
            "jobs": plan.jobs,
            "nvcc_threads": plan.nvcc_threads,
            "attempts": attempts,
            "peak_rss_bytes": peak_tree,
            "max_process_rss_bytes": peak_proc,
            "compile_units": progress.total,
            "compiler_cache": ccache_stats(env.bin / "ccache", stats_log),
        }
        cache = stats["compiler_cache"]
        if cache:
            log.info(f"[{target.name}] compiler cache: {cache['hits']} hits, {cache['misses']} misses "
                     f"({cache['hit_rate']:.0%} hit rate)")
        return wheels[0], stats

    def _repair(self, env: PythonEnv, wheel: Path, out: Path, torch: TorchInfo) -> tuple[Path, str]:
        """auditwheel repair, excluding torch's and CUDA's libraries; fail if anything of theirs got grafted."""
        cmd: list[str] = [str(env.bin / "auditwheel"), "repair", "--wheel-dir", str(out)]
        for pattern in NEVER_GRAFT:
            cmd += ["--exclude", pattern]
        cmd.append(str(wheel))
        run_env = env.environ(self.env)
        run_env.setdefault("SOURCE_DATE_EPOCH", REPRODUCIBLE_EPOCH)
        run_env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(torch.lib), run_env.get("LD_LIBRARY_PATH")]))
        result = run(cmd, env=run_env, error=BuildError, what="auditwheel repair",
                     fix="read auditwheel's message: it names the library or symbol version that blocks the tag")
        repaired = sorted(out.glob("*.whl"))
        if len(repaired) != 1:
            raise BuildError(f"auditwheel left {len(repaired)} wheels in {out}: {result.stdout[-2000:]}")
        check_not_grafted(repaired[0])
        return repaired[0], platform_tag_of(repaired[0])


@dataclasses.dataclass(frozen=True)
class Built:
    """What a backend hands to the gate and the record: a labelled, repaired wheel and how it was made."""

    wheel: Path
    torch: TorchInfo  # what the build environment's torch reported (the label's only source)
    label: str
    version: str  # target version + label
    platform_tag: str
    stats: dict[str, Any]
    toolchain: dict[str, str]


def check_built_name(wheel: Path, target: Target) -> None:
    """The build produced the matrix's package and version (label aside)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    name, got_version, _, _ = parse_wheel_filename(wheel.name)
    if canonicalize_name(target.package) != name or got_version.public != target.version:
        raise BuildError(
            f"[{target.name}] the build produced {name} {got_version}, "
            f"the matrix says {target.package} {target.version}",
            fix="fix the version or package in wheels/matrix.toml (or the recipe)",
        )


def check_not_grafted(wheel: Path) -> None:
    """auditwheel must not have copied torch's or CUDA's libraries into the wheel (torch brings them at run time)."""
    import fnmatch
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        grafted = [n for n in zf.namelist() if ".libs/" in n]
    bad = [g for g in grafted if any(fnmatch.fnmatch(g.rsplit("/", 1)[-1], p) for p in NEVER_GRAFT)]
    if bad:
        raise BuildError(f"auditwheel grafted torch or CUDA libraries into the wheel: {bad}")
    if grafted:
        log.info(f"auditwheel grafted: {', '.join(grafted)}")


def platform_tag_of(wheel: Path) -> str:
    return wheel.name[: -len(".whl")].split("-")[-1]


def run_build(
    cmd: list[str], env: Mapping[str, str], cwd: Path, log_path: Path, progress: NinjaProgress
) -> tuple[int, int, int, bool]:
    """Run the build, teeing output to log_path and progress; sample the process tree's memory.

    Returns (exit status, peak RSS of the whole tree, peak RSS of one process, killed-for-memory?).
    The build runs in its own session (so a terminal's Ctrl-C reaches only us and we stop it in order); therefore a
    SIGTERM or SIGHUP to this process must stop the build too, or its compilers would run on as orphans.
    """
    oom = False
    with log_path.open("w") as logf, _termination_as_interrupt():
        proc = subprocess.Popen(
            cmd, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True,
        )
        assert proc.stdout is not None
        with TreeMemorySampler(proc.pid) as memory:
            try:
                for line in proc.stdout:
                    logf.write(line)
                    progress.feed(line)
                    if _OOM_PATTERNS.search(line):
                        oom = True
                rc = proc.wait()
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM): stop the whole compiler tree, keep the build tree for a resume.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                raise
    if rc in (-9, 137):
        oom = True
    return rc, memory.peak_tree, memory.peak_process, oom


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while the block runs (signals reach only the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def error_excerpt(text: str, limit: int = 30) -> str:
    """The compiler's own error lines (what a user needs), else the end of the log."""
    lines = text.splitlines()
    errors = [l for l in lines if re.search(r"\berror\b|^FAILED: |error:", l) and "Traceback" not in l]
    picked = errors[:limit] if errors else lines[-limit:]
    return "\n".join(l[:400] for l in picked)


def explain_build_failure(text: str) -> str | None:
    """Known causes users hit with these packages, recognised in the build log."""
    checks = [
        (r"The detected CUDA version \((\S+)\) mismatches the version that was used to compile\s+PyTorch \((\S+)\)",
         "nvcc is CUDA {0} but torch was built with CUDA {1}: set CUDA_HOME to a matching toolkit"),
        (r"unsupported GNU version", "the host compiler is newer than this nvcc supports: use an older g++ or newer CUDA"),
        (r"No module named 'pkg_resources'", "this setup.py needs setuptools<81 (constraints.txt pins it)"),
        (r"CUDA_HOME environment variable is not set", "no CUDA toolkit was found: set CUDA_HOME"),
        (r"fatal error: (\S+\.h): No such file or directory", "a header is missing from the toolkit: {0}"),
    ]
    for pattern, message in checks:
        match = re.search(pattern, text)
        if match:
            return message.format(*match.groups())
    return None


def ccache_stats(ccache: Path, stats_log: Path) -> dict[str, Any] | None:
    """Hits and misses of this build alone, from ccache's per-build stats log."""
    if not ccache.exists() or not stats_log.exists():
        return None
    env = {**os.environ, "CCACHE_STATSLOG": str(stats_log)}
    out = subprocess.run([str(ccache), "--print-log-stats"], capture_output=True, text=True, env=env).stdout
    counters = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def num(name: str) -> int:
        return int(counters.get(name, "0").strip() or 0)

    hits = num("direct_cache_hit") + num("preprocessed_cache_hit")
    misses = num("cache_miss")
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": (hits / total) if total else 0.0}


def main(opts: Options, env: Mapping[str, str] | None = None) -> int:
    pipeline = Pipeline(opts, os.environ if env is None else env)
    if opts.list_only:
        return pipeline.list()
    return pipeline.build_all()


def cli(argv: list[str]) -> int:
    from .options import resolve

    return main(resolve(argv, os.environ))
