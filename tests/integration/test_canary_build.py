"""The canary, really built: torch 2.5.1 from PyPI (the CUDA 12.4 build), a provisioned CUDA 12.4 toolkit, archs 8.0
and 9.0. One build per session (conftest.canary_build); each test checks one promise of the pipeline about it."""

from __future__ import annotations

import email.parser
import hashlib
import io
import json
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from canary_helpers import CANARY_TARGET, Build, pipeline_env, run_wheels

from wheels import build, envs, log, sources, toolchain
from wheels.errors import ToolchainError
from wheels.options import resolve
from wheels.toolchain import Toolchains

pytestmark = pytest.mark.integration

LABEL = "cu124torch2.5"


def _metadata(wheel: Path) -> tuple[str, dict[str, str]]:
    with zipfile.ZipFile(wheel) as zf:
        (info,) = {n.split("/")[0] for n in zf.namelist() if n.split("/")[0].endswith(".dist-info")}
        meta = email.parser.BytesParser().parsebytes(zf.read(f"{info}/METADATA"))
    return info, dict(meta.items())


def test_label_in_file_name_and_metadata(canary_build: Build) -> None:
    wheel = canary_build.wheel
    assert re.fullmatch(rf"canary-0\.1\.0\+{LABEL}-cp311-cp311-manylinux_\d+_\d+_x86_64\.whl", wheel.name), wheel.name
    info, meta = _metadata(wheel)
    assert info == f"canary-0.1.0+{LABEL}.dist-info"
    assert meta["Name"] == "canary"
    assert meta["Version"] == f"0.1.0+{LABEL}"


def test_extension_carries_sass_for_sm80_and_sm90(canary_build: Build, tmp_path: Path) -> None:
    with zipfile.ZipFile(canary_build.wheel) as zf:
        (member,) = [n for n in zf.namelist() if re.fullmatch(r"canary/_C\..*\.so", n)]
        extension = Path(zf.extract(member, tmp_path))
        grafted = [n for n in zf.namelist() if ".libs/" in n]
    assert not grafted, f"auditwheel grafted libraries into the wheel: {grafted}"
    cuobjdump = Toolchains(canary_build.cache, pipeline_env()).get("12.4").tool("cuobjdump")
    listing = subprocess.run([cuobjdump, "--list-elf", extension], capture_output=True, text=True, check=True).stdout
    archs = set(re.findall(r"\.(sm_\d+)\.cubin", listing))
    assert archs == {"sm_80", "sm_90"}, listing


def test_imports_in_a_fresh_environment_with_torch(canary_build: Build, tmp_path: Path) -> None:
    """Not the build environment: a new one holding only torch 2.5.1 (from PyPI) and the wheel."""
    torch = resolve([CANARY_TARGET], pipeline_env()).targets[CANARY_TARGET].torch
    probe = (
        "import json, torch, canary, canary._C\n"
        "try:\n"
        "    canary.saxpy(2.0, torch.ones(3), torch.ones(3))\n"
        "    error = None\n"
        "except RuntimeError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'file': canary.__file__, 'torch': torch.__version__, 'error': error}))\n"
    )
    with envs.fresh_env("3.11", "python3", parent=tmp_path) as env:
        envs.install_torch(env, torch)
        env.install([str(canary_build.wheel)], no_deps=True, constraints=False, what="the canary wheel")
        out = subprocess.run([env.python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert Path(result["file"]).is_relative_to(env.path), result  # the installed wheel, not the repo's folder
    assert result["torch"] == "2.5.1+cu124"
    # The binding ran: its own input check rejects CPU tensors (no GPU is needed to get this far).
    assert "x and y must be CUDA tensors" in (result["error"] or ""), result


def test_manifest_record(canary_build: Build) -> None:
    rec, wheel = canary_build.record, canary_build.wheel
    assert rec["target"] == CANARY_TARGET and rec["filename"] == wheel.name
    assert rec["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert rec["size"] == wheel.stat().st_size
    assert (rec["package"], rec["version"], rec["label"]) == ("canary", f"0.1.0+{LABEL}", LABEL)
    assert rec["torch"] == {"build": "cu124", "version": "2.5.1+cu124", "cuda": "12.4", "cxx11_abi": False}
    assert rec["cuda"] == "12.4"
    assert rec["python_tag"] == "cp311" and rec["platform_tag"] in wheel.name
    assert rec["cuda_archs"] == ["8.0", "9.0"]
    assert rec["cxx11_abi"] is False
    host_cxx = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0].strip()
    recipe = Toolchains(canary_build.cache, pipeline_env()).recipe_id("12.4")  # the provisioned toolkit's recipe
    assert rec["toolchain"] == {"nvcc": "12.4.131", "host_cxx": host_cxx, "toolkit_recipe": recipe}
    # The key the record carries is the one the pipeline computes now, and it says "built".
    listed = run_wheels(
        "build",
        "--list",
        "--json",
        CANARY_TARGET,
        "--wheelhouse",
        canary_build.wheelhouse,
        "--cache-dir",
        canary_build.cache,
        env=pipeline_env(),
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["state"], row["cache_key"]) == ("built", rec["cache_key"])
    assert re.fullmatch(r"[0-9a-f]{64}", rec["cache_key"])
    stats = rec["build"]
    assert 0 < stats["seconds"] <= canary_build.seconds
    assert stats["jobs"] >= 1 and stats["attempts"] == 1
    # Peak RSS of the compiler tree: more than one compiler process's, less than this machine has.
    import psutil

    assert 50 * 2**20 < stats["max_process_rss_bytes"] <= stats["peak_rss_bytes"] < psutil.virtual_memory().total
    assert stats["compile_units"] == 2
    cache = stats["compiler_cache"]  # a fresh cache folder: the compiler cache was empty
    assert (cache["hits"], cache["misses"]) == (0, 2), cache
    assert rec["gate"]["verdict"] == "pass"
    assert (canary_build.wheelhouse / rec["gate"]["report"]).is_file()


def _tripwire(name: str):  # noqa: ANN202
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} was called: the no-op rerun did real work")

    return fail


def test_second_run_skips_without_starting_a_compiler(canary_build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process rerun with every way into real work wired to fail, and every program started recorded.

    Only version probes may run (`nvcc --version`, `c++ --version`: the cache key covers the toolchain). A control run
    with --force under the same wiring must trip a wire, which proves the wires sit on the build path.
    """
    env = pipeline_env()
    argv = [CANARY_TARGET, "--wheelhouse", str(canary_build.wheelhouse), "--cache-dir", str(canary_build.cache)]
    monkeypatch.setattr(build, "cached_env", _tripwire("creating the build environment"))
    monkeypatch.setattr(build, "run_build", _tripwire("the compile step"))
    monkeypatch.setattr(envs, "_create", _tripwire("creating an environment"))
    monkeypatch.setattr(toolchain.Toolchains, "provision", _tripwire("provisioning a toolkit"))
    monkeypatch.setattr(sources, "unpack", _tripwire("unpacking the source"))
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args, *a, **k) -> None:  # noqa: ANN001
            started.append([str(x) for x in ([args] if isinstance(args, (str, Path)) else args)])
            super().__init__(args, *a, **k)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    logged = io.StringIO()
    monkeypatch.setattr(log, "_stream", logged)
    manifest = canary_build.wheelhouse / "manifest.json"
    before = (manifest.read_bytes(), canary_build.wheel.stat().st_mtime_ns)

    assert build.main(resolve(argv, env), env) == 0

    assert (manifest.read_bytes(), canary_build.wheel.stat().st_mtime_ns) == before
    assert started, "the rerun should at least have asked nvcc for its version"
    assert all(cmd[1:] == ["--version"] for cmd in started), started
    assert f"{CANARY_TARGET}: up to date ({canary_build.wheel.name}" in logged.getvalue()

    started.clear()
    with pytest.raises(AssertionError, match="creating the build environment was called"):
        build.main(resolve([*argv, "--force"], env), env)
    assert all(cmd[1:] == ["--version"] for cmd in started), started
    assert manifest.read_bytes() == before[0]


def test_bare_default_build_names_the_targets_it_can_build(tmp_path: Path) -> None:
    """`nox -s wheels` with no arguments on a machine without CUDA 12.1: fails before any work, pointing at cu124."""
    env = pipeline_env()
    if Toolchains(tmp_path / "probe", env).plan("12.1").nvcc_version is not None:
        pytest.skip("this machine has a CUDA 12.1 toolkit, so the default targets are buildable here")
    cache, wheelhouse = tmp_path / "cache", tmp_path / "wheelhouse"
    result = run_wheels("build", "--wheelhouse", wheelhouse, "--cache-dir", cache, env=env, timeout=300)
    assert result.returncode == ToolchainError.exit_code, result.stderr
    err = result.stderr
    assert "No CUDA 12.1 toolkit for flash-attn, mmcv, canary" in err, err
    assert "CUDA_HOME" in err
    can_build = re.search(r"Targets this machine can build now: (.*)", err)
    assert can_build, err
    assert set(can_build.group(1).rstrip(".").split(", ")) == {
        "canary-cu124",
        "mmcv-cu124",
        "flash-attn-cu124",
        "flash-attn-hdim128-cu124",
        "xformers-cu124",  # upstream's wheel: nothing to compile, so no toolkit needed
    }
    assert not cache.exists() and not wheelhouse.exists(), "work was done before the toolchain check"
