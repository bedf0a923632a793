"""Toolchain planning against fake nvcc programs: a match, a mismatch, and the error that lists buildable targets."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from spine_fakes import fake_cuda_home, write_program

from wheels import build
from wheels.errors import ToolchainError
from wheels.options import resolve
from wheels.toolchain import Toolchains, debian_mirror, extract_deb, host_cxx_version, nvcc_version


@pytest.fixture
def env(tmp_path: Path, fake_cxx: Path) -> dict[str, str]:
    """No CUDA anywhere unless a test adds it: PATH is an empty folder, the C++ compiler a fake."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return {"PATH": str(empty), "CXX": str(fake_cxx)}


def toolchains(
    tmp_path: Path, env: dict[str, str], *, recipes: dict | None = None, system: tuple[Path, ...] = ()
) -> Toolchains:
    tc = Toolchains(tmp_path / "cache", env)
    tc.system_homes = system
    if recipes is not None:
        tc.recipes = recipes
    return tc


def test_nvcc_version_parsing(tmp_path: Path) -> None:
    home = fake_cuda_home(tmp_path / "cuda", "12.4.131")
    assert nvcc_version(home / "bin" / "nvcc") == ("12.4", "12.4.131")
    assert nvcc_version(tmp_path / "nope" / "nvcc") is None
    garbage = write_program(tmp_path / "garbage" / "nvcc", "echo hello\n")
    assert nvcc_version(garbage) is None


def test_matching_cuda_home_is_used(tmp_path: Path, env: dict[str, str]) -> None:
    home = fake_cuda_home(tmp_path / "cuda-12.4", "12.4.131")
    tc = toolchains(tmp_path, {**env, "CUDA_HOME": str(home)}, recipes={})
    plan = tc.plan("12.4")
    assert (plan.cuda, plan.nvcc_version) == ("12.4", "12.4.131")
    assert plan.how == f"CUDA_HOME {home} (nvcc 12.4.131)"
    got = tc.get("12.4")
    assert (got.cuda_home, got.origin, got.nvcc_version, got.host_cxx) == (
        home,
        "CUDA_HOME",
        "12.4.131",
        "c++ (Fake 1.0) 12.2.0",
    )
    assert got.identity() == {
        "nvcc": "12.4.131",
        "host_cxx": "c++ (Fake 1.0) 12.2.0",
    }  # no path: same compiler, same key
    run_env = got.env({"PATH": "/usr/bin"})
    assert run_env["CUDA_HOME"] == run_env["CUDA_PATH"] == str(home)
    assert run_env["PATH"] == f"{home / 'bin'}:/usr/bin"
    assert got.tool("cuobjdump") == home / "bin" / "cuobjdump"


def test_mismatching_cuda_home_falls_through_to_provisioning(tmp_path: Path, env: dict[str, str]) -> None:
    home = fake_cuda_home(tmp_path / "cuda-12.1", "12.1.105")
    tc = toolchains(tmp_path, {**env, "CUDA_HOME": str(home)}, recipes={"12.4": {"nvcc-version": "12.4.131"}})
    plan = tc.plan("12.4")
    assert plan.nvcc_version == "12.4.131"
    assert plan.how == f"provision CUDA 12.4.131 into {tmp_path / 'cache' / 'toolkits'}"
    assert plan.found == (f"CUDA_HOME {home}: CUDA 12.1 (nvcc 12.1.105)",)


def test_mismatch_with_nothing_to_provision_is_unavailable(tmp_path: Path, env: dict[str, str]) -> None:
    home = fake_cuda_home(tmp_path / "cuda-13", "13.0.88")
    system = fake_cuda_home(tmp_path / "usr-local-cuda", "12.4.131")
    tc = toolchains(tmp_path, {**env, "CUDA_HOME": str(home)}, recipes={}, system=(system,))
    plan = tc.plan("12.1")
    assert plan.nvcc_version is None and plan.how == "unavailable"
    assert plan.found == (
        f"CUDA_HOME {home}: CUDA 13.0 (nvcc 13.0.88)",
        f"{system} {system}: CUDA 12.4 (nvcc 12.4.131)",
    )
    with pytest.raises(ToolchainError, match="No CUDA 12.1 toolkit for CUDA 12.1"):
        tc.get("12.1")


def test_a_cuda_home_without_nvcc_is_reported(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "empty-cuda").mkdir()
    tc = toolchains(tmp_path, {**env, "CUDA_HOME": str(tmp_path / "empty-cuda")}, recipes={})
    assert tc.plan("12.4").found == (f"CUDA_HOME={tmp_path / 'empty-cuda'} has no working bin/nvcc",)


def test_order_cuda_home_then_provisioned_then_system_then_path(tmp_path: Path, env: dict[str, str]) -> None:
    recipes = {"12.4": {"nvcc-version": "12.4.131", "deb-sha256": "x"}}
    cuda_home = fake_cuda_home(tmp_path / "cuda-home", "12.4.99")
    provisioned_home = toolchains(tmp_path, env, recipes=recipes).provisioned_home("12.4")
    provisioned = fake_cuda_home(provisioned_home, "12.4.131")
    (provisioned / ".complete").write_text("12.4.131\n")
    system = fake_cuda_home(tmp_path / "system-cuda", "12.4.1")
    on_path = fake_cuda_home(tmp_path / "path-cuda", "12.4.2")
    path_env = {**env, "PATH": f"{on_path / 'bin'}:{env['PATH']}"}

    def origin(e: dict[str, str], system: tuple[Path, ...] = (system,)) -> tuple[str, str]:
        got = toolchains(tmp_path, e, recipes=recipes, system=system).get("12.4")
        return got.origin, got.nvcc_version

    assert origin({**path_env, "CUDA_HOME": str(cuda_home)}) == ("CUDA_HOME", "12.4.99")
    assert origin(path_env) == ("provisioned", "12.4.131")
    (provisioned / ".complete").unlink()  # an interrupted provisioning does not count
    assert origin(path_env) == (str(system), "12.4.1")
    assert origin(path_env, system=()) == ("PATH", "12.4.2")


def test_a_toolkit_from_an_older_recipe_is_not_used(tmp_path: Path, env: dict[str, str]) -> None:
    old = toolchains(tmp_path, env, recipes={"12.4": {"nvcc-version": "12.4.131", "wheels": ["a==1"]}})
    home = fake_cuda_home(old.provisioned_home("12.4"), "12.4.131")
    (home / ".complete").write_text("")
    assert old.get("12.4").origin == "provisioned"
    assert old.get("12.4").identity()["toolkit_recipe"] == old.recipe_id("12.4")  # the recipe is in the cache key
    new = toolchains(tmp_path, env, recipes={"12.4": {"nvcc-version": "12.4.131", "wheels": ["a==2"]}})
    assert new.provisioned_home("12.4") != home
    plan = new.plan("12.4")
    assert plan.how.startswith("provision CUDA 12.4.131") and plan.recipe == new.recipe_id("12.4")


def test_unavailable_error_says_what_why_and_what_next(tmp_path: Path, env: dict[str, str]) -> None:
    home = fake_cuda_home(tmp_path / "cuda", "13.0.88")
    tc = toolchains(tmp_path, {**env, "CUDA_HOME": str(home)}, recipes={})
    err = tc.unavailable_error(tc.plan("12.1"), ["canary", "mmcv"], ["canary-cu124", "mmcv-cu124"])
    assert err.what == "No CUDA 12.1 toolkit for canary, mmcv"
    assert err.why and "nvcc must agree in major.minor" in err.why and "CUDA 13.0 (nvcc 13.0.88)" in err.why
    assert err.fix and "set CUDA_HOME to a CUDA 12.1 toolkit" in err.fix and "nvidia/cuda:12.1.x-devel" in err.fix
    assert err.fix.endswith("Targets this machine can build now: canary-cu124, mmcv-cu124")
    assert err.exit_code == 4
    bare = tc.unavailable_error(toolchains(tmp_path, env, recipes={}).plan("12.1"), ["x"], [])
    assert bare.why and bare.why.endswith("found: no nvcc at all") and "can build now" not in (bare.fix or "")


def test_a_default_build_without_the_toolkit_stops_before_any_work(
    tmp_path: Path, env: dict[str, str], matrix: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare `nox -s wheels` where only CUDA 12.4 is at hand: one error naming the cu124 targets, nothing built."""
    home = fake_cuda_home(tmp_path / "cuda-12.4", "12.4.131")
    env = {**env, "CUDA_HOME": str(home)}
    opts = resolve(
        ["--matrix", str(matrix()), "--wheelhouse", str(tmp_path / "wh"), "--cache-dir", str(tmp_path / "c")], env
    )
    pipeline = build.Pipeline(opts, env)
    pipeline.toolchains.recipes = {}
    pipeline.toolchains.system_homes = ()

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a build started")

    monkeypatch.setattr(build.Pipeline, "build_one", no_work)
    with pytest.raises(ToolchainError) as e:
        pipeline.build_all()
    assert e.value.what == "No CUDA 12.1 toolkit for canary, fa"
    assert e.value.fix and e.value.fix.endswith("Targets this machine can build now: canary-cu124, fa-hdim128-cu124")
    assert not (tmp_path / "wh").exists() and not (tmp_path / "c").exists()


def test_list_works_without_a_toolchain(
    tmp_path: Path, env: dict[str, str], matrix: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    opts = resolve(
        [
            "--matrix",
            str(matrix()),
            "--list",
            "--json",
            "--cache-dir",
            str(tmp_path / "c"),
            "--wheelhouse",
            str(tmp_path / "wh"),
            "canary",
            "canary-cu124",
        ],
        env,
    )
    pipeline = build.Pipeline(opts, env)
    pipeline.toolchains.recipes = {"12.4": {"nvcc-version": "12.4.131"}}
    pipeline.toolchains.system_homes = ()
    assert pipeline.list() == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["canary"]["state"], rows["canary"]["cache_key"], rows["canary"]["toolchain"]) == (
        "no toolchain",
        None,
        "unavailable",
    )
    assert rows["canary-cu124"]["state"] == "missing" and len(rows["canary-cu124"]["cache_key"]) == 64
    assert rows["canary-cu124"]["toolchain"].startswith("provision CUDA 12.4.131")


def test_no_cxx_compiler(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError, match="No C\\+\\+ compiler: `/nonexistent/g\\+\\+ --version` does not run"):
        host_cxx_version({"CXX": "/nonexistent/g++"})


def test_debian_mirror_setting() -> None:
    assert debian_mirror({"DEBIAN_MIRROR": "http://mirror.example/debian/"}) == "http://mirror.example/debian"
    assert debian_mirror({}).startswith("http")


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_extract_deb_unpacks_the_data_archive(tmp_path: Path) -> None:
    deb = tmp_path / "x.deb"
    deb.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", _tar_xz({"./control": b"Package: x\n"}))
        + _ar_member("data.tar.xz", _tar_xz({"./usr/bin/cuobjdump": b"#!/bin/sh\n"}))
    )
    extract_deb(deb, tmp_path / "out")
    assert (tmp_path / "out" / "usr" / "bin" / "cuobjdump").read_bytes() == b"#!/bin/sh\n"
    assert not (tmp_path / "out" / "control").exists()


def test_extract_deb_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"<html>mirror error page</html>")
    with pytest.raises(ToolchainError, match="is not a Debian package"):
        extract_deb(bad, tmp_path / "out")
    empty = tmp_path / "empty.deb"
    empty.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n"))
    with pytest.raises(ToolchainError, match="has no data archive"):
        extract_deb(empty, tmp_path / "out")
