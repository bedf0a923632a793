"""`nox -s image --profile core` for real: a debootstrap base, torch and the canary served by the embedded index.

One image build for the module (the expensive part: ~5 GB of torch and CUDA wheels installed), then checks against it:
the smoke test passed, no compiler is inside, no secret reached a layer or the history, a rebuild with no changes
reuses every layer; and two builds that must fail fast, without compiling, because a locked wheel is missing.

The base image is made with debootstrap (Debian 12 minbase, from the host's Debian mirror), its root filesystem
cached under .cache/image/bases by a content key; an image that already has the key's tag (`python -m image base`)
is reused and kept, one this module imports is removed at the end. Third-party wheels are downloaded once into
.cache/image/wheels (the mirror the embedded index serves) and kept for the next run.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image.build import build_image
from image.config import REPO_ROOT
from image.debootstrap import BaseSpec, ensure_base, host_mirror
from image.docker import Docker
from image.lock import make_lock
from image.options import BuildOptions, resolve_build, resolve_lock
from wheels.errors import ImageError

pytestmark = [pytest.mark.integration, pytest.mark.docker]

DOCKER = os.environ.get("DOCKER") or "/usr/bin/docker"
TAG = "steadydancer-image-test:core-cu124"
CANARY_TARGET = "canary-cu124"
# Canary secrets: they are handed to the build the way real ones are, and must be found nowhere in the image.
INDEX_PASSWORD = "canary-index-password-7f3a9c2e51"
HF_TOKEN = "hf_canaryTokenDoNotLeak8b41d0"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without image or pipeline settings (a developer's must not leak into the test)."""
    drop = ("IMAGE_", "WHEELS_", "TORCH_INDEX_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in ("WHEELHOUSE", "HF_TOKEN")}
    return {**env, **extra}


@pytest.fixture(scope="session")
def docker() -> Docker:
    engine = Docker(DOCKER)
    try:
        engine.check()
    except ImageError as e:
        pytest.skip(f"no Docker engine: {e.what}")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (CI installs it in .ci/run)")
    return engine


@pytest.fixture(scope="session")
def base_image(docker: Docker) -> Iterator[str]:
    spec = BaseSpec(suite="bookworm", mirror=host_mirror("bookworm"), repository="steadydancer-base")
    tag, created = ensure_base(spec, REPO_ROOT / ".cache" / "image", docker)
    yield tag
    if created:
        docker.remove(tag)


@pytest.fixture(scope="session")
def canary_wheelhouse(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheelhouse with a gated canary-cu124 wheel: the session's shared canary build when the suite has one,
    else built here. Copied, because the image build writes its records next to the wheels."""
    try:
        source = Path(request.getfixturevalue("canary_build").wheelhouse)
    except pytest.FixtureLookupError:
        source = tmp_path_factory.mktemp("canary-wheelhouse")
        cache = tmp_path_factory.mktemp("canary-cache")
        env = clean_env()
        result = subprocess.run(
            [sys.executable, "-m", "wheels", "build", CANARY_TARGET, "--wheelhouse", source, "--cache-dir", cache],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        shutil.rmtree(cache, ignore_errors=True)
        if result.returncode != 0:
            pytest.fail(f"building {CANARY_TARGET} failed:\n{result.stderr[-6000:]}")
    wheelhouse = tmp_path_factory.mktemp("image-wheelhouse")
    for item in source.iterdir():
        if item.name in ("manifest.json", "reports") or item.suffix == ".whl":
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, wheelhouse / item.name)
    return wheelhouse


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-build")


@pytest.fixture(scope="module")
def core_lock(canary_wheelhouse: Path, workdir: Path) -> Path:
    output = workdir / "requirements-core-cu124.lock"
    opts = resolve_lock(
        ["--profile", "core", "--torch", "cu124", "--wheelhouse", str(canary_wheelhouse), "--output", str(output)],
        clean_env(),
        cwd=REPO_ROOT,
    )
    make_lock(opts)
    return output


def build_options(
    base_image: str, wheelhouse: Path, lock: Path, workdir: Path, *extra: str, tag: str = TAG
) -> tuple[BuildOptions, dict[str, str]]:
    env = clean_env(IMAGE_INDEX_USERNAME="canary-user", IMAGE_INDEX_PASSWORD=INDEX_PASSWORD, HF_TOKEN=HF_TOKEN)
    argv = [
        "--profile", "core", "--torch", "cu124", "--base-image", base_image, "--tag", tag,
        "--lock", str(lock), "--wheelhouse", str(wheelhouse), "--index-dir", str(workdir / "index"),
        "--record", str(workdir / f"record-{time.monotonic_ns()}.json"), "--no-bench", *extra,
    ]  # fmt: skip
    return resolve_build(argv, env, cwd=REPO_ROOT), env


@pytest.fixture(scope="module")
def core_image(
    docker: Docker, base_image: str, canary_wheelhouse: Path, core_lock: Path, workdir: Path
) -> Iterator[dict[str, Any]]:
    opts, env = build_options(base_image, canary_wheelhouse, core_lock, workdir)
    record = build_image(opts, env)
    yield record
    docker.remove(TAG)


def test_core_image_builds_and_its_smoke_test_passes(core_image: dict[str, Any], docker: Docker) -> None:
    smoke = core_image["smoke"]
    assert smoke["ok"] and smoke["profile"] == "core"
    checks = {c["name"]: c for c in smoke["checks"]}
    assert set(checks) == {"python", "torch", "ours", "no-compiler"} and all(c["ok"] for c in checks.values())
    assert checks["torch"]["details"]["version"] == "2.5.1+cu124" and checks["torch"]["details"]["cudnn"]
    assert checks["ours"]["details"]["canary"]["version"] == "0.1.0+cu124torch2.5"
    assert checks["python"]["details"]["version"].startswith("3.11.")
    # What nox -s image records: size, build time, layers (they add up to the image).
    assert core_image["size_bytes"] > 2 * 2**30 and core_image["build"]["seconds"] > 0
    layers = sum(layer["size_bytes"] for layer in core_image["layers"])
    assert layers == pytest.approx(core_image["size_bytes"], rel=0.02)
    assert core_image["wheels_from"] == "embedded index"
    inspect = docker.inspect(TAG)
    assert inspect["Config"]["Labels"]["steadydancer.profile"] == "core"  # type: ignore[index]


def test_no_compiler_in_the_image(core_image: dict[str, Any], docker: Docker) -> None:
    script = (
        "for c in gcc cc g++ c++ clang nvcc cpp; do command -v $c && exit 1; done; "
        "find / -xdev \\( -name 'gcc*' -o -name 'g++*' -o -name nvcc -o -name 'cc1*' -o -name 'clang*' \\) "
        "-type f -perm -u+x -print"
    )
    result = docker.run(TAG, ["-c", script], entrypoint="/bin/sh")
    assert result.returncode == 0, f"a compiler is on PATH: {result.stdout}"
    assert result.stdout.strip() == "", f"compiler executables in the image:\n{result.stdout}"


def test_no_secret_in_history_config_or_any_layer(core_image: dict[str, Any], docker: Docker) -> None:
    needles = [INDEX_PASSWORD.encode(), HF_TOKEN.encode()]
    history = subprocess.run([DOCKER, "history", "--no-trunc", TAG], capture_output=True, text=True, check=True)
    inspect = subprocess.run([DOCKER, "image", "inspect", TAG], capture_output=True, text=True, check=True)
    for needle in needles:
        assert needle.decode() not in history.stdout and needle.decode() not in inspect.stdout
    # Every byte of every layer, the config and the manifest. The control proves the search sees layer contents:
    # the smoke report (written by a RUN, copied into the last layer) names the canary's version.
    control = b'"version": "0.1.0+cu124torch2.5"'
    found = docker.save_contains(TAG, [*needles, control])
    assert found == [control]


def test_a_rebuild_without_changes_reuses_every_layer(
    core_image: dict[str, Any], base_image: str, canary_wheelhouse: Path, core_lock: Path, workdir: Path
) -> None:
    opts, env = build_options(base_image, canary_wheelhouse, core_lock, workdir)
    again = build_image(opts, env)
    assert again["build"]["steps"] == core_image["build"]["steps"] > 0
    assert again["build"]["cached_steps"] == again["build"]["steps"], again["build"]["rebuilt"]
    assert again["image_id"] == core_image["image_id"]


def nocompile_sdist(folder: Path) -> tuple[Path, str]:
    """A tiny sdist whose setup.py announces itself: if anything ever builds it, the log says so."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nocompile-0.1.tar.gz"
    setup = b'print("NOCOMPILE-SETUP-RAN")\nfrom setuptools import setup\nsetup(name="nocompile", version="0.1")\n'
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("nocompile-0.1/setup.py", setup), ("nocompile-0.1/PKG-INFO",
                           b"Metadata-Version: 2.1\nName: nocompile\nVersion: 0.1\n")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lock_missing_a_wheel(core_image: dict[str, Any], core_lock: Path, workdir: Path) -> Path:
    """The core lock plus a package the index has only as an sdist (put into the embedded index's folder)."""
    _, digest = nocompile_sdist(workdir / "index" / "packages")
    lock = workdir / "missing.lock"
    lock.write_text(core_lock.read_text() + f"nocompile==0.1 --hash=sha256:{digest}\n")
    return lock


def temp_tags() -> list[str]:
    out = subprocess.run([DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True)
    return [t for t in out.stdout.split() if t.startswith(TAG.split(":")[0] + ":build-")]


def test_a_missing_wheel_stops_the_build_before_docker_starts(
    base_image: str, canary_wheelhouse: Path, lock_missing_a_wheel: Path, workdir: Path
) -> None:
    opts, env = build_options(base_image, canary_wheelhouse, lock_missing_a_wheel, workdir, tag=TAG + "-missing")
    started = time.monotonic()
    with pytest.raises(ImageError) as e:
        build_image(opts, env)
    text = e.value.render()
    assert "nocompile==0.1: only its sdist is available, and the image never compiles" in text
    assert "nothing was built" in text
    assert time.monotonic() - started < 120
    assert not Docker(DOCKER).exists(TAG + "-missing") and temp_tags() == []


def test_the_installer_inside_the_build_refuses_to_compile_too(
    base_image: str, canary_wheelhouse: Path, lock_missing_a_wheel: Path, workdir: Path
) -> None:
    """With the preflight skipped, the build's own installer (--no-build) stops at resolution: fast, no compile."""
    opts, env = build_options(
        base_image, canary_wheelhouse, lock_missing_a_wheel, workdir, "--skip-preflight", tag=TAG + "-missing"
    )
    started = time.monotonic()
    with pytest.raises(ImageError) as e:
        build_image(opts, env)
    seconds = time.monotonic() - started
    text = e.value.render()
    assert "docker build of the core target failed" in text and "nothing was tagged" in text
    log = Path(opts.common.cache_dir / "logs" / "build-core-cu124.log").read_text()
    assert "nocompile" in log and "NOCOMPILE-SETUP-RAN" not in log
    assert seconds < 300, f"the failing build took {seconds:.0f}s"
    assert not Docker(DOCKER).exists(TAG + "-missing") and temp_tags() == []


def test_a_wheelhouse_build_bind_mounts_its_wheels_and_keeps_none(
    docker: Docker, base_image: str, canary_wheelhouse: Path, core_lock: Path, workdir: Path
) -> None:
    """--wheel-source wheelhouse: no index at all, the locked wheels bind-mounted into the install step only.
    A one-package lock (a pin taken from the core lock) keeps it quick; torch and ours are then absent by design."""
    from image.reqs import parse_lock

    lock = parse_lock(core_lock.read_text())
    pin = lock.by_key()["typing-extensions"]
    head = "".join(f"{line}\n" for line in core_lock.read_text().splitlines() if line.startswith("#"))
    head = "".join(line + "\n" for line in head.splitlines() if not line.startswith("# input: wheel "))
    tiny = workdir / "tiny.lock"
    tiny.write_text(head + "\n" + pin.line() + "\n")
    tag = TAG + "-wheelhouse"
    opts, env = build_options(
        base_image, canary_wheelhouse, tiny, workdir, "--wheel-source", "wheelhouse", "--smoke-skip", "torch,ours",
        tag=tag,
    )  # fmt: skip
    try:
        record = build_image(opts, env)
        assert record["wheels_from"] == "wheelhouse (bind-mounted)" and record["smoke"]["ok"]
        result = docker.run(tag, ["-c", "import typing_extensions; print('ok')"], entrypoint="/opt/venv/bin/python")
        assert result.stdout.strip() == "ok", result.stderr
        wheel = next((opts.common.cache_dir / "context" / "core-cu124" / "wheels" / "thirdparty").glob("*.whl"))
        assert docker.save_contains(tag, [wheel.name.encode(), wheel.read_bytes()[:4096]]) == []
    finally:
        docker.remove(tag)
