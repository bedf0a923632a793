"""The container backend's cibuildwheel configuration, read back through cibuildwheel's own option parser."""

from __future__ import annotations

import dataclasses
import json
import shlex
import zipfile
from pathlib import Path

import pytest

from wheels.build import NEVER_GRAFT, Pipeline
from wheels.container import config
from wheels.container.backend import PYPROJECT
from wheels.container.incontainer import expectation_from_json, expectation_to_json
from wheels.container.index import IndexSpec, download_command, manylinux_platforms, torch_in_index
from wheels.errors import EnvError
from wheels.options import TorchBuild, resolve

REPO = Path(__file__).resolve().parents[2]
CU124 = TorchBuild(name="cu124", source="index", version="2.5.1", cuda="12.4", index_url="https://pypi.org/simple")


def _cibw_env(**overrides: str) -> dict[str, str]:
    mounts = config.Mounts(Path("/h/index"), Path("/h/ccache"), Path("/h/uv"), Path("/h/meta"))
    compile_env = config.compile_environment(
        cuda="12.4", arch_list="8.0;9.0", jobs={"MAX_JOBS": "2", "NVCC_THREADS": "1"},
        recipe_env={"FLASH_ATTN_LOCAL_VERSION": "cu124torch2.5"}, epoch="315532800", ccache_maxsize="20G",
    )
    env = config.cibw_environment(
        image="builder:cuda12.4", python="3.11", mounts=mounts, compile_env=compile_env, never_graft=NEVER_GRAFT
    )
    env.update(overrides)
    return env


def _cibw_options(env: dict[str, str]):  # noqa: ANN202
    from cibuildwheel.options import CommandLineArguments, compute_options

    args = dataclasses.replace(
        CommandLineArguments.defaults(),
        platform="linux",
        config_file=str(PYPROJECT),
        package_dir=REPO / "wheels/canary",
    )
    return compute_options("linux", args, env)


def test_cibuildwheel_reads_our_settings_for_the_one_build() -> None:
    opts = _cibw_options(_cibw_env())
    assert opts.globals.build_selector("cp311-manylinux_x86_64")
    assert not opts.globals.build_selector("cp312-manylinux_x86_64")
    assert not opts.globals.build_selector("cp311-musllinux_x86_64")
    build = opts.build_options("cp311-manylinux_x86_64")
    assert build.manylinux_images["x86_64"] == "builder:cuda12.4"  # the local tag, not a registry image
    assert build.build_frontend.name == "build[uv]" and build.build_frontend.args == ["--no-isolation"]
    engine = build.container_engine
    assert engine.name == "docker"
    assert engine.create_args == (
        "--network=none",
        "--volume=/h/index:/wheels:ro",
        "--volume=/h/ccache:/ccache",
        "--volume=/h/uv:/uv-cache",
        "--volume=/h/meta:/cibw-meta",
    )


def test_environment_round_trips_through_cibuildwheels_parser() -> None:
    build = _cibw_options(_cibw_env()).build_options("cp311-manylinux_x86_64")
    env = build.environment.as_dictionary({})
    assert env["PYTORCH_NVCC"] == "/usr/local/bin/ccache /usr/local/cuda-12.4/bin/nvcc"  # a value with a space
    assert env["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"  # a value with a shell metacharacter
    assert env["CXX"] == "/usr/local/lib/ccache/c++"
    assert env["CCACHE_DIR"] == config.CCACHE and env["CCACHE_BASEDIR"] == config.PROJECT
    assert env["CCACHE_STATSLOG"].startswith(config.META + "/")
    assert env["FLASH_ATTN_LOCAL_VERSION"] == "cu124torch2.5"
    # Installs in the container read the bind-mounted index only.
    assert env["UV_CONFIG_FILE"] == config.UV_CONFIG


def test_repair_excludes_every_never_graft_library_and_fills_cibuildwheels_placeholders() -> None:
    from cibuildwheel.util.helpers import prepare_command

    build = _cibw_options(_cibw_env()).build_options("cp311-manylinux_x86_64")
    command = prepare_command(build.repair_command, wheel="/tmp/w/x.whl", dest_dir="/tmp/out", package="/", project="/")
    words = shlex.split(command)
    excluded = [words[i + 1] for i, w in enumerate(words) if w == "--exclude"]
    assert excluded == list(NEVER_GRAFT)
    assert "/tmp/w/x.whl" in words and "/tmp/out" in words
    # Relabelling comes first, as in the local backend, then auditwheel repairs the labelled wheel.
    assert command.index("relabel") < command.index("auditwheel repair")


def test_static_settings_name_the_container_paths_the_backend_mounts() -> None:
    build = _cibw_options(_cibw_env()).build_options("cp311-manylinux_x86_64")
    assert config.BUILD_REQUIREMENTS in build.before_build
    assert config.BUILD_INFO in build.before_build and config.BUILD_INFO in build.repair_command
    assert config.EXPECT in build.test_command and f"{config.META}/gate.json" in build.test_command
    assert "{wheel}" in build.test_command
    test_env = build.test_environment.as_dictionary({"PATH": "/usr/bin"})
    assert test_env["UV_CONFIG_FILE"] == config.UV_TEST_CONFIG
    # The build interpreter links packages from the uv cache; the test environment is a plain (copied) install.
    assert build.environment.as_dictionary({})["UV_LINK_MODE"] == "symlink" and test_env["UV_LINK_MODE"] == "copy"
    assert f"UV_CONFIG_FILE={config.UV_CONFIG} " in build.before_test  # torch itself comes with its dependencies


def test_uv_settings_read_the_local_index_only() -> None:
    import tomllib

    build = tomllib.loads(config.uv_config())["pip"]
    test = tomllib.loads(config.uv_config(no_deps=True))["pip"]
    assert build == {"no-index": True, "find-links": [config.WHEELS]}
    assert test == {**build, "no-deps": True}


def test_a_ci_environment_cannot_change_the_build_behind_the_pipelines_back() -> None:
    """The backend drops CIBW_* from its own environment; only what config.py sets reaches cibuildwheel."""
    from wheels.container.backend import _host_env

    out = _host_env({"CIBW_BUILD": "cp39-*", "PATH": "/usr/bin", "HOME": "/root"}, "/usr/bin/docker", Path("/tmp/t"))
    assert "CIBW_BUILD" not in out and out["HOME"] == "/root"
    assert out["PATH"].split(":")[0] == "/tmp/t/bin"


def test_manylinux_platforms_cover_2_28_down_to_manylinux1() -> None:
    tags = manylinux_platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and tags[-1] == "manylinux1_x86_64"
    assert "manylinux2014_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    assert manylinux_platforms((2, 17))[0] == "manylinux_2_17_x86_64"


def test_download_command_pins_platform_python_and_constraints(tmp_path: Path) -> None:
    spec = IndexSpec(CU124, ("setuptools", "ninja"), "3.11", "torch==2.5.1\n")
    cmd = download_command(Path("/venv/bin/python"), spec, tmp_path)
    assert cmd[:4] == ["/venv/bin/python", "-m", "pip", "download"]
    assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == "3.11"
    assert cmd[cmd.index("--constraint") + 1].endswith("constraints.txt")
    assert cmd[-3:] == ["torch==2.5.1", "setuptools", "ninja"]
    assert "--extra-index-url" not in cmd  # the cu124 torch is on PyPI itself
    cu121 = dataclasses.replace(CU124, name="cu121", cuda="12.1", index_url="https://download.pytorch.org/whl/cu121")
    cmd121 = download_command(Path("p"), IndexSpec(cu121, (), "3.11", ""), tmp_path)
    assert cmd121[cmd121.index("--index-url") + 1].endswith("/cu121")
    assert cmd121[cmd121.index("--extra-index-url") + 1] == "https://pypi.org/simple"
    assert IndexSpec(cu121, (), "3.11", "").key != IndexSpec(CU124, (), "3.11", "").key


def _fake_torch_wheel(folder: Path, version: str, cuda: str, abi: str) -> Path:
    wheel = folder / f"torch-{version.split('+')[0]}-cp311-cp311-manylinux1_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("torch/version.py", f"__version__ = '{version}'\ndebug = False\ncuda: Optional[str] = '{cuda}'\n")
        cmake = f'  set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI={abi}")\n'
        zf.writestr("torch/share/cmake/Torch/TorchConfig.cmake", cmake)
    return wheel


def test_torch_forecast_reads_the_wheel_it_will_install(tmp_path: Path) -> None:
    _fake_torch_wheel(tmp_path, "2.5.1+cu124", "12.4", "0")
    info = torch_in_index(tmp_path)
    got = (info.version, info.cuda, info.cxx11_abi, info.python, info.python_tag)
    assert got == ("2.5.1+cu124", "12.4", False, "3.11", "cp311")
    _fake_torch_wheel(tmp_path, "2.6.0+cu126", "12.6", "1")
    with pytest.raises(EnvError, match="expected one torch wheel"):
        torch_in_index(tmp_path)


def test_expectation_travels_into_the_container_unchanged() -> None:
    env = {"WHEELS_IMAGE_BASE": "ubuntu-24.04"}
    opts = resolve(["flash-attn-hdim128-cu124"], env, cwd=REPO)
    target = opts.targets["flash-attn-hdim128-cu124"]
    from wheels.recipes import RECIPES

    expect = Pipeline(opts, env).expectation(target, RECIPES[target.recipe])
    assert expectation_from_json(json.loads(json.dumps(expectation_to_json(expect)))) == expect
    assert expect.flavour == "hdim128" and expect.default_flavour == "full" and expect.base == "ubuntu-24.04"
