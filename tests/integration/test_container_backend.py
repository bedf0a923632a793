"""The container backend end to end: the canary built by cibuildwheel inside a builder image, gated and recorded.

No registry is reachable here, so the builder image is built (by the pipeline, from wheels/builder/Dockerfile) on the
Debian bookworm stand-in base (debootstrap), not on manylinux_2_28. Everything else is what a user runs: the same
commands, the same cibuildwheel configuration, the local wheel index, the compiler cache, the gate and the record.
One build (cold compiler cache); the images and the cache folder it creates are removed afterwards.

The toolkit comes from the session's cache (conftest.py's wheels_cache). Set TEST_WHEELS_CACHE to keep the toolkit,
the downloads, the stand-in rootfs, the wheel index and the container's uv cache between sessions (a developer's loop;
CI leaves it unset and starts cold).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wheels.container.backend import RUN_LABEL
from wheels.options import ENV_VARS

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
TARGET = "canary-cu124"


def _env(**extra: str) -> dict[str, str]:
    """This environment without the pipeline's own settings (a developer's CUDA_HOME or WHEELS_* must not leak in)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != "CUDA_PATH"}
    env = {k: v for k, v in env.items() if not k.startswith(("WHEELS_", "TORCH_INDEX_URL", "CIBW_"))}
    return {**env, **extra}


def _wheels(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wheels", *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=3600,
    )


@pytest.fixture(scope="module")
def docker() -> str:
    client = os.environ.get("DOCKER") or shutil.which("docker")
    if not client or subprocess.run([client, "info"], capture_output=True).returncode != 0:
        pytest.skip("no running Docker engine (.ci/run installs and starts one)")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (.ci/run installs it)")
    return client


def _build_cache(docker: str) -> list[dict]:
    out = subprocess.run([docker, "system", "df", "--verbose", "--format", "{{json .BuildCache}}"],
                         capture_output=True, text=True).stdout.strip()
    return json.loads(out or "[]") or []


@pytest.fixture(scope="module")
def build_cache(docker: str) -> Iterator[None]:
    """BuildKit keeps what a build made (the 2 GB context, the toolkit layer) after its image is gone: remove the
    records this module's builds added, so a test run leaves the engine's build cache as it found it."""
    before = {r["ID"] for r in _build_cache(docker)}
    yield
    # One record per call (the engine takes one id filter at a time), newest first: a step's record keeps its
    # parent in use, so parents go on a later pass.
    for _ in range(4):
        added = [r for r in _build_cache(docker) if r["ID"] not in before]
        if not added:
            break
        for record in sorted(added, key=lambda r: r["CreatedAt"], reverse=True):
            subprocess.run([docker, "builder", "prune", "--force", f"--filter=id={record['ID']}"], capture_output=True)


@pytest.fixture(scope="module")
def cache(wheels_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's cache: the session's toolkit and downloads (shared with the canary build, provisioned once),
    its own builder files, wheel index and uv cache (8 GB, removed when the module ends, not the session)."""
    cache = tmp_path_factory.mktemp("container-cache")
    for sub in ("toolkits", "downloads"):
        (wheels_cache / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(wheels_cache.resolve() / sub)
    shared = os.environ.get("TEST_WHEELS_CACHE")
    if shared:
        for sub in ("builder", "container"):
            (Path(shared) / sub).mkdir(parents=True, exist_ok=True)
            (cache / sub).symlink_to(Path(shared).resolve() / sub)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)  # unlinks the shared links, never what they point to


@pytest.fixture(scope="module")
def images(docker: str, cache: Path, build_cache: None) -> Iterator[dict[str, str]]:
    """The stand-in base and the builder image on it, made by `python -m wheels builder --standin`; removed after."""
    run_id = uuid.uuid4().hex[:8]
    tags = {"base": f"wheels-test-standin:{run_id}", "builder": f"wheels-test-builder:{run_id}-cuda{{cuda}}"}
    env = _env(DOCKER=docker, DOCKER_BUILDKIT="1")
    try:
        made = _wheels("builder", "--standin", TARGET, "--builder-base", tags["base"], "--builder-image",
                       tags["builder"], "--cache-dir", cache, env=env)
        if made.returncode != 0:
            pytest.fail(f"making the builder image failed (exit {made.returncode}):\n{made.stderr[-6000:]}")
        yield tags
    finally:
        subprocess.run([docker, "rmi", "--force", tags["builder"].replace("{cuda}", "12.4"), tags["base"]],
                       capture_output=True)


@pytest.fixture(scope="module")
def build(docker: str, cache: Path, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    wheelhouse = tmp_path_factory.mktemp("container-wheelhouse")
    args = ("build", "--backend", "container", TARGET, "--builder-base", images["base"], "--builder-image",
            images["builder"], "--cache-dir", cache, "--wheelhouse", wheelhouse)
    env = _env(DOCKER=docker, DOCKER_BUILDKIT="1")
    started = time.monotonic()
    result = _wheels(*args, env=env)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(f"the container build failed (exit {result.returncode}):\n{result.stderr[-8000:]}")
    record = json.loads((wheelhouse / "manifest.json").read_text())["records"][TARGET]
    again = _wheels(*args, env=env)
    return {"wheelhouse": wheelhouse, "record": record, "log": result.stderr, "seconds": seconds, "again": again,
            "docker": docker}


def test_the_builder_image_is_used_as_it_is(build: dict) -> None:
    assert "matches its recipe: used as it is, not pulled" in build["log"]
    assert "Building the builder image" not in build["log"]  # made once, by `wheels builder`


def test_canary_is_recorded_with_the_tag_auditwheel_computed_in_the_container(build: dict, images: dict) -> None:
    record = build["record"]
    wheel = build["wheelhouse"] / record["filename"]
    assert wheel.is_file()
    assert record["build"]["backend"] == "container"
    assert record["label"] == "cu124torch2.5" and record["torch"]["version"] == "2.5.1+cu124"
    # The stand-in base is Debian bookworm (glibc 2.36): auditwheel gives the oldest manylinux tag whose symbol
    # versions the extension satisfies (manylinux_2_34 for the canary, which needs GLIBC_2.32 and GLIBCXX_3.4.29),
    # never more than the base's own glibc and never the manylinux_2_28 only the real base would earn.
    tag = re.fullmatch(r"manylinux_2_(\d+)_x86_64", record["platform_tag"])
    assert tag and 28 < int(tag.group(1)) <= 36, record["platform_tag"]
    assert record["filename"].endswith(f"-cp311-cp311-{record['platform_tag']}.whl")
    container = record["build"]["container"]
    assert container["glibc"] == "2.36" and container["base"] == images["base"]
    assert record["toolchain"]["builder_base"] == images["base"] and record["toolchain"]["nvcc"] == "12.4.131"


def test_the_container_test_step_and_the_host_gate_both_passed(build: dict) -> None:
    record = build["record"]
    test = record["build"]["container"]["test"]
    assert test["verdict"] == "pass"
    # The ABI gate's own checks, run by cibuildwheel's test step in its fresh environment inside the container.
    assert {"integrity", "symbols", "cxx11_abi", "cuda", "portability", "import"} <= set(test["checks"])
    assert record["gate"]["verdict"] == "pass"
    report = json.loads((build["wheelhouse"] / record["gate"]["report"]).read_text())
    assert report["verdict"] == "pass" and report["wheel"] == record["filename"]


def test_the_build_ends_with_the_compiler_caches_hit_rate(build: dict) -> None:
    cache = build["record"]["build"]["compiler_cache"]
    assert cache is not None and cache["hits"] + cache["misses"] == 2  # binding.cpp and saxpy.cu
    assert re.search(r"compiler cache: \d+ hits, \d+ misses \(\d+% hit rate\)", build["log"])


def test_nothing_is_left_running_and_a_rerun_is_a_no_op(build: dict) -> None:
    left = subprocess.run([build["docker"], "ps", "--all", "--quiet", "--filter", f"label={RUN_LABEL}"],
                          capture_output=True, text=True).stdout.split()
    assert left == []
    again = build["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stderr and "cibuildwheel" not in again.stderr
