"""The Dockerfile: its node block matches nodes.toml, and the rules that keep it wheel-only and secret-free."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from image.config import load_nodes
from image.dockerfile import BEGIN, DOCKERFILE, END, check, render
from wheels.errors import ImageError

TEXT = DOCKERFILE.read_text()


def instructions(text: str = TEXT) -> list[str]:
    """Logical instructions: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_the_committed_node_block_matches_nodes_toml() -> None:
    check(load_nodes())


def test_a_changed_pin_file_is_caught_and_rewritten(tmp_path: Path) -> None:
    nodes = load_nodes()
    shorter = type(nodes)(path=nodes.path, comfyui=nodes.comfyui, packs=nodes.packs[:-1])
    copy = tmp_path / "Dockerfile"
    copy.write_text(TEXT)
    with pytest.raises(ImageError, match="does not match"):
        check(shorter, copy)
    rewritten = render(TEXT, shorter, copy)
    assert "ComfyUI-WanVideoWrapper" not in rewritten.split(BEGIN)[1].split(END)[0]
    copy.write_text(rewritten)
    check(shorter, copy)


def test_one_layer_per_node_pack_after_comfyui_and_after_the_python_environment() -> None:
    steps = instructions()
    copies = [i for i, s in enumerate(steps) if s.startswith("COPY sources/nodes/")]
    assert len(copies) == len(load_nodes().packs)
    comfyui = steps.index("COPY sources/ComfyUI /opt/ComfyUI")
    installs = [i for i, s in enumerate(steps) if "uv pip install" in s]
    assert installs and max(installs) < comfyui < min(copies)


def test_base_image_is_an_argument_and_defaults_to_ubuntu_2204() -> None:
    assert instructions()[0] == "ARG BASE_IMAGE=ubuntu:22.04"
    assert "FROM ${BASE_IMAGE} AS base" in instructions()


def test_installs_are_binary_only_hashed_and_resolution_free() -> None:
    installs = [s for s in instructions() if "uv pip install" in s]
    assert len(installs) == 2
    for step in installs:
        for flag in ("--require-hashes", "--no-deps", "--no-build"):
            assert flag in step


def test_wheels_are_never_copied_into_a_layer() -> None:
    for step in instructions():
        if step.startswith(("COPY", "ADD")):
            assert "wheels" not in step and ".whl" not in step, step
        assert not step.startswith("ADD "), "ADD fetches without checksums; COPY from the staged context instead"


def test_secrets_never_travel_as_arg_or_env() -> None:
    for step in instructions():
        if step.startswith(("ARG", "ENV")):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|NETRC|INDEX_URL|CREDENTIAL", step, re.I), step
    text = "\n".join(instructions())
    assert "--mount=type=secret,id=uv" in text and "--mount=type=secret,id=netrc" in text
    assert "--mount=type=secret,id=hf_token" in text


def test_each_run_is_one_concern_with_its_cleanup() -> None:
    for step in instructions():
        if not step.startswith("RUN"):
            continue
        assert "set -eux;" in step, step[:80]
        if "apt-get install" in step:
            assert "apt-get update" in step and "rm -rf /var/lib/apt/lists/*" in step
            assert "--no-install-recommends" in step


def test_no_compiler_or_toolkit_is_installed() -> None:
    text = "\n".join(s for s in instructions() if s.startswith("RUN"))
    for package in ("build-essential", "gcc", "g++", "clang", "cuda-toolkit", "cuda-nvcc", "python3.11-dev"):
        assert not re.search(rf"(^|\s){re.escape(package)}(\s|$)", text), package


def test_every_target_ends_with_the_smoke_report() -> None:
    steps = instructions()
    for target in ("core", "full"):
        start = steps.index(f"FROM {'core-tree' if target == 'core' else 'comfyui'} AS {target}")
        assert steps[start + 1] == f"COPY --from={target}-smoke /smoke-report.json /opt/smoke/report.json"
