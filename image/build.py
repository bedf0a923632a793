"""`nox -s image`: the image from prebuilt wheels, step by step, each step logged with its duration.

check      docker answers; the Dockerfile's node block matches nodes.toml; the lock is for this profile and current
sources    ComfyUI and node packs (full): fetched by commit, or local folders
wheels     where the locked wheels come from: the embedded index (default: our gated wheels published into it,
           third-party wheels mirrored next to it), an index URL, or the wheelhouse bind-mounted into the build
preflight  every locked wheel is there, by sha256, for the image's platform: else stop, naming each missing one
build      docker build (BuildKit) to a temporary tag; the Dockerfile ends with the smoke test
smoke      the image runs once more: the smoke test's report, from a container with no network
record     size, build time, layers, smoke report -> <wheelhouse>/image-<profile>-<torch>.json, bench/results.md
tag        only now does the requested tag point at the image (then --push); a failure leaves no tag behind
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from wheels import log
from wheels.errors import ImageError
from wheels.util import file_lock, sha256_file

from . import context, dockerfile, record, reqs, sources
from .config import REPO_ROOT
from .docker import Docker
from .lock import command_line as lock_command
from .lock import current_digests, gated_wheels
from .options import BuildOptions, LockOptions, resolve_build
from .wheelsrc import HashCache, check_folders, check_index, files_for, mirror, raise_missing, reader_for

SMOKE_PREFIX = "smoke-report: "


# ---------------------------------------------------------------------------------------------------------------------
# Checks before any work


def load_lock(opts: BuildOptions) -> reqs.Lock:
    c = opts.common
    relock = lock_command(LockOptions(c, c.lock_path, (), (), False, False))
    if not c.lock_path.exists():
        raise ImageError(
            f"There is no lock for the {c.profile} profile with torch {c.torch.name}: {c.lock_path}",
            why="the image installs exactly the files a lock names, by sha256; the lock is made once, by a session",
            fix=f"make it: {relock} (see the README's lock section for the production one)",
        )
    lock = reqs.parse_lock(c.lock_path.read_text(), str(c.lock_path))
    made_for = (lock.first("profile"), (lock.first("torch") or "").split(" ", 1)[0])
    if made_for != (c.profile, c.torch.name):
        raise ImageError(
            f"{c.lock_path} was made for the {made_for[0]} profile with torch {made_for[1]}, "
            f"not {c.profile} with {c.torch.name}",
            fix=f"give the matching lock with --lock, or make one: {relock}",
        )
    return lock


def check_current(opts: BuildOptions, lock: reqs.Lock, trees: Sequence[sources.SourceTree]) -> None:
    c = opts.common
    recorded = lock.inputs()
    current = dict(current_digests(c, trees, {p.key for p in lock.pins}))
    if c.index_url:  # the lock's wheels come from that index: the wheelhouse is not an input
        recorded = {k: v for k, v in recorded.items() if not k.startswith("wheel ")}
        current = {k: v for k, v in current.items() if not k.startswith("wheel ")}
    problems = reqs.stale_inputs(recorded, current)
    if problems:
        without = tuple(w for w in (lock.first("without") or "").split(", ") if w)
        relock = lock_command(LockOptions(c, c.lock_path, without, (), False, False))
        raise ImageError(
            f"{c.lock_path} is stale:\n  " + "\n  ".join(problems),
            why="the lock must be resolved from today's requirements, constraints and wheels",
            fix=f"remake it: {relock}",
        )


def split_ours(opts: BuildOptions, lock: reqs.Lock) -> tuple[list[reqs.Pin], list[reqs.Pin]]:
    """(third-party, ours). Ours are the pins a gated wheel of the wheelhouse satisfies (by sha256): they are
    published into the embedded index and installed in their own layer. Everything else, a package of the matrix
    included (e.g. xformers before the pipeline has fetched and gated it), is mirrored from upstream. With an index
    URL there is no wheelhouse to ask: the matrix's package names decide the layering."""
    c = opts.common
    if c.index_url:
        return reqs.split(lock.pins, c.ours)
    gated = {r.sha256 for r in gated_wheels(c.wheelhouse, c.torch.name)}
    third = [p for p in lock.pins if not gated.intersection(p.hashes)]
    mine = [p for p in lock.pins if gated.intersection(p.hashes)]
    return third, mine


# ---------------------------------------------------------------------------------------------------------------------
# Secrets: written to a private folder outside the build context, passed with --secret, removed afterwards


@contextlib.contextmanager
def secret_files(opts: BuildOptions, uv_config: str, index_url: str | None) -> Iterator[dict[str, Path]]:
    folder = Path(tempfile.mkdtemp(prefix="image-secrets-"))
    folder.chmod(0o700)
    try:
        paths: dict[str, Path] = {}

        def write(name: str, text: str) -> None:
            path = folder / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            paths[name] = path

        write("uv", uv_config)
        if opts.credentials is not None and index_url:
            host = urllib.parse.urlsplit(index_url).hostname or ""
            write("netrc", f"machine {host}\nlogin {opts.credentials.username}\npassword {opts.credentials.password}\n")
        if opts.hf_token:
            write("hf_token", opts.hf_token)
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def uv_config(index_url: str | None) -> str:
    """The installer's settings inside the build: an index, or the bind-mounted wheel folder and nothing else."""
    if index_url:
        return f'[pip]\nindex-url = "{index_url}"\n'
    return '[pip]\nno-index = true\nfind-links = ["/wheels"]\n'


# ---------------------------------------------------------------------------------------------------------------------
# Where the wheels come from


@contextlib.contextmanager
def wheel_source(
    opts: BuildOptions, lock: reqs.Lock, env: Mapping[str, str]
) -> Iterator[tuple[str | None, dict[reqs.Pin, Path] | None, str]]:
    """(index URL for the build, files for a wheelhouse build, description), with the preflight done."""
    c = opts.common
    third, mine = split_ours(opts, lock)
    tags = reqs.target_tags(c.python, c.platform)
    hashes = HashCache(c.cache_dir / "hashes.json")
    upstream = [c.pypi_url]
    if c.torch.index_url and c.torch.index_url.rstrip("/") != c.pypi_url.rstrip("/"):
        upstream.insert(0, c.torch.index_url)

    def preflight(verdicts: Sequence[Any], where: str) -> None:
        missing = [v for v in verdicts if not v.ok]
        if opts.skip_preflight:
            if missing:
                log.warn(f"preflight skipped: {len(missing)} locked wheel(s) are not available from {where}")
            return
        raise_missing(verdicts, c.ours, where, c.lock_path)
        log.info(f"preflight: all {len(verdicts)} locked wheels are available from {where}")

    if c.index_url:
        with log.step(f"Preflight: asking {c.index_url} for the {len(lock.pins)} locked wheels"):
            user = opts.credentials.username if opts.credentials else None
            password = opts.credentials.password if opts.credentials else None
            preflight(check_index(lock.pins, reader_for(c.index_url, user, password), tags), c.index_url)
        yield c.index_url, None, f"index {c.index_url}"
        return

    with log.step(f"Mirroring the third-party wheels of the lock into {c.mirror}"):
        mirror(third, upstream, c.mirror, tags, hashes, present=[c.wheelhouse, opts.index_dir / "packages"])

    if opts.wheel_source == "wheelhouse":
        with log.step("Preflight: the wheelhouse and the mirror against the lock"):
            verdicts = check_folders(lock.pins, [c.wheelhouse, c.mirror], tags, hashes)
            preflight(verdicts, f"{c.wheelhouse} and {c.mirror}")
        yield None, dict(files_for(verdicts)), "wheelhouse (bind-mounted)"
        return

    from wheels.publish import embedded_index

    with embedded_index(
        opts.index_dir, port=opts.index_port, env=env, extra_roots=[c.mirror], wheelhouse=c.wheelhouse
    ) as index:
        if mine and opts.publish:
            publish_into(opts, index, env)
        with log.step("Preflight: what the embedded index serves against the lock"):
            verdicts = check_folders(lock.pins, [index.packages_dir, c.mirror], tags, hashes)
            preflight(verdicts, f"the embedded index ({index.packages_dir} and {c.mirror})")
        yield index.simple_url, None, "embedded index"


def publish_into(opts: BuildOptions, index: Any, env: Mapping[str, str]) -> None:
    """Our gated wheels into the running embedded index (idempotent: what it holds with the same hash is skipped)."""
    from wheels.publish.pipeline import publish_embedded, staged_wheels
    from wheels.publish.settings import IndexSettings, PublishOptions

    c = opts.common
    popts = PublishOptions(
        wheelhouse=c.wheelhouse,
        matrix_path=c.matrix_path,
        index=IndexSettings(data_dir=opts.index_dir, port=opts.index_port),
        targets=(),
        repository_url=None,
        index_url=None,
        static_dir=None,
    )
    with (
        log.step(f"Publishing the gated wheels of {c.wheelhouse} into the embedded index"),
        staged_wheels(popts, env) as staged,
    ):
        publish_embedded(staged, popts, env, index=index)


# ---------------------------------------------------------------------------------------------------------------------
# The build


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def expectation(opts: BuildOptions, ours: Sequence[reqs.Pin]) -> dict[str, Any]:
    c = opts.common
    return {
        "profile": c.profile,
        "python": c.python,
        "ours": [p.name for p in sorted(ours, key=lambda p: p.key)],
        "nodes": [p.name for p in c.nodes.packs] if c.profile == "full" else [],
        "comfyui": "/opt/ComfyUI",
        "skip": sorted(opts.smoke_skip),
    }


def run_smoke(docker: Docker, ref: str) -> dict[str, Any]:
    """The smoke test once more, in a container without network: its report, parsed."""
    with log.step(f"Smoke test: running {ref} once more (no network)"):
        result = docker.run(
            ref,
            ["/opt/smoke/smoke.py", "--expect", "/opt/smoke/expect.json", "--json"],
            entrypoint="/opt/venv/bin/python",
        )
    report = None
    for line in (result.stdout or "").splitlines():
        if line.startswith(SMOKE_PREFIX):
            report = json.loads(line[len(SMOKE_PREFIX) :])
    if report is None:
        raise ImageError(
            f"The smoke test in {ref} printed no report (exit {result.returncode})",
            why=((result.stdout or "") + (result.stderr or "")).strip()[-3000:] or None,
        )
    for check in report["checks"]:
        state = "skipped" if check.get("skipped") else ("ok" if check["ok"] else "FAILED")
        log.info(f"smoke: {state:7} {check['name']}" + (f": {check['error'][:400]}" if check.get("error") else ""))
    if not report["ok"]:
        raise ImageError(f"The smoke test failed in {ref}; the tag was not moved", fix="see the failed checks above")
    return report


def build_image(opts: BuildOptions, env: Mapping[str, str]) -> dict[str, Any]:
    c = opts.common
    started = time.monotonic()
    docker = Docker(opts.docker)
    with log.step("Checking Docker, the Dockerfile and the lock"):
        server = docker.check()
        dockerfile.check(c.nodes)
        lock = load_lock(opts)
    trees: list[sources.SourceTree] = []
    if c.profile == "full":
        trees = sources.materialize(c.nodes.all, c.source_dirs, c.cache_dir)
    check_current(opts, lock, trees)
    third, mine = split_ours(opts, lock)
    log.info(f"lock {c.lock_path.name}: {len(third)} third-party wheels, ours: {', '.join(map(str, mine)) or 'none'}")

    ctx_dir = c.cache_dir / "context" / f"{c.profile}-{c.torch.name}"
    temp_tag = f"{opts.tag.rsplit(':', 1)[0]}:build-{secrets.token_hex(6)}"
    with (
        file_lock(ctx_dir.parent / f".{ctx_dir.name}.lock", f"the build context {ctx_dir}"),
        wheel_source(opts, lock, env) as (index_url, files, wheels_from),
    ):
        with log.step(f"Staging the build context in {ctx_dir}"):
            context.stage(
                ctx_dir,
                third=third,
                ours=mine,
                expect=expectation(opts, mine),
                trees=trees,
                wheel_files=files,
            )
        labels = {
            "org.opencontainers.image.title": "steadydancer-comfyui",
            "org.opencontainers.image.revision": git_revision(),
            "org.opencontainers.image.base.name": opts.base_image,
            "steadydancer.profile": c.profile,
            "steadydancer.torch": c.torch.name,
            "steadydancer.lock.sha256": sha256_file(c.lock_path),
        }
        build_args = {"BASE_IMAGE": opts.base_image}
        if opts.bake_models:
            build_args["BAKE_MODELS"] = opts.bake_models
        try:
            title = (
                f"docker build --target {c.profile} ({c.profile}, torch {c.torch.name}, "
                f"base {opts.base_image}, wheels from {wheels_from})"
            )
            with secret_files(opts, uv_config(index_url), index_url) as secret_paths, log.step(title):
                result = docker.build(
                    ctx_dir,
                    dockerfile=dockerfile.DOCKERFILE,
                    target=c.profile,
                    tag=temp_tag,
                    build_args=build_args,
                    secrets=secret_paths,
                    labels=labels,
                    log_path=c.cache_dir / "logs" / f"build-{c.profile}-{c.torch.name}.log",
                )
            log.info(f"built in {log.fmt_seconds(result.seconds)}; {result.cached} of {len(result.steps)} steps cached")
            smoke = run_smoke(docker, temp_tag)
            info = docker.inspect(temp_tag)
            history = docker.history(temp_tag)
            docker.tag(temp_tag, opts.tag)
        finally:
            docker.remove(temp_tag)
    log.info(f"tagged {opts.tag} ({info['Id'][:19]}, {log.fmt_bytes(int(info['Size']))})")
    if opts.push:
        with log.step(f"Pushing {opts.tag}"):
            docker.push(opts.tag)

    rec = {
        "date": record.now(),
        "tag": opts.tag,
        "image_id": info["Id"],
        "profile": c.profile,
        "torch": c.torch.name,
        "base_image": opts.base_image,
        "wheels_from": wheels_from,
        "lock": {"path": str(c.lock_path), "sha256": sha256_file(c.lock_path), "packages": len(lock.pins)},
        "size_bytes": int(info["Size"]),
        "build": {
            "seconds": round(result.seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "steps": len(result.steps),
            "cached_steps": result.cached,
            "rebuilt": [f"[{s.stage}] {s.what[:120]}" for s in result.steps if not s.cached],
            "log": str(result.log_path),
        },
        "layers": record.layers(history),
        "smoke": smoke,
        "sources": {t.pin.name: t.record() for t in trees},
        "docker": server,
        "machine": record.machine(),
        "pushed": opts.push,
    }
    record.write(opts.record_path, rec)
    if opts.bench_path is not None:
        record.update_bench(opts.bench_path, rec)
    return rec


def cli(argv: Sequence[str]) -> int:
    opts = resolve_build(argv, os.environ)
    build_image(opts, os.environ)
    return 0
