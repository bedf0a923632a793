"""image/nodes.toml and image/image.toml: the committed files load, and bad ones fail with clear messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from image.config import load_nodes, load_settings, source_env_var
from wheels.errors import ConfigError

GOOD = """
schema = 1

[comfyui]
repo = "https://example.invalid/ComfyUI"
commit = "2f35f4a08176d993cded35dac3332be4f7287f41"
verified = "test"

[nodes.PackA]
repo = "https://example.invalid/PackA"
commit = "795e45156ece99afbc3efef911e63fcb46e6a20d"
verified = "test"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    return path


def test_committed_nodes_pin_every_pack_that_runs_steadydancer() -> None:
    nodes = load_nodes()
    assert {p.name for p in nodes.packs} == {
        "ComfyUI-Manager",
        "ComfyUI-WanVideoWrapper",
        "ComfyUI-KJNodes",
        "ComfyUI-VideoHelperSuite",
        "ComfyUI-WanAnimatePreprocess",
        "comfyui_controlnet_aux",
        "ComfyUI-GGUF",
    }
    for source in nodes.all:
        assert re.fullmatch(r"[0-9a-f]{40}", source.commit), source.name
        assert source.verified, f"{source.name} must say how its commit was verified"
        assert source.repo.startswith("https://github.com/")
    assert nodes.packs[-1].name == "ComfyUI-WanVideoWrapper"  # the most often bumped pin is the last layer


def test_committed_settings_load() -> None:
    settings = load_settings()
    assert settings.settings["base-image"] == "ubuntu:22.04"
    assert settings.settings["python"] == "3.11"
    assert settings.sdists["chumpy"].build_requires == ("pip",)


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('verified = "test"\n\n[nodes', 'verifed = "test"\n\n[nodes'))
    with pytest.raises(ConfigError, match='Unknown key "verifed".*Perhaps you meant "verified"'):
        load_nodes(path)


@pytest.mark.parametrize("commit", ["main", "v0.33.0", "2f35f4a", "2F35F4A08176D993CDED35DAC3332BE4F7287F4"])
def test_a_pin_must_be_a_full_commit(tmp_path: Path, commit: str) -> None:
    path = write(tmp_path, GOOD.replace("795e45156ece99afbc3efef911e63fcb46e6a20d", commit))
    with pytest.raises(ConfigError, match="not a full 40-hex commit"):
        load_nodes(path)


def test_missing_verification_note_fails(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('verified = "test"\n', "", 1))
    with pytest.raises(ConfigError, match='Missing "verified"'):
        load_nodes(path)


def test_duplicate_pack_names_fail(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + GOOD.split("\n\n", 3)[-1].replace("PackA", "packa"))
    with pytest.raises(ConfigError, match="appears twice"):
        load_nodes(path)


def test_local_path_is_resolved_against_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + 'path = "src/PackA"\n')
    (pack,) = load_nodes(path).packs
    assert pack.path == (tmp_path / "src" / "PackA").resolve()


def test_source_env_var_names() -> None:
    assert source_env_var("ComfyUI-KJNodes") == "IMAGE_SOURCE_COMFYUI_KJNODES"
    assert source_env_var("comfyui_controlnet_aux") == "IMAGE_SOURCE_COMFYUI_CONTROLNET_AUX"
