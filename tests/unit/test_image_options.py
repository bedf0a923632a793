"""Settings of `nox -s image` / `nox -s lock`: image.toml < environment < command line, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from image.config import IMAGE_DIR
from image.options import lock_path_for, resolve_build, resolve_lock
from wheels.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    opts = resolve_build([], {}, cwd=tmp_path)
    c = opts.common
    assert c.profile == "full" and c.torch.name == "cu121" and c.torch.index_url.endswith("/whl/cu121")
    assert opts.base_image == "ubuntu:22.04"
    assert opts.tag == "steadydancer-comfyui:full-cu121"
    assert opts.wheel_source == "index" and c.index_url is None  # the embedded index
    assert c.lock_path == IMAGE_DIR / "requirements.lock"
    assert c.wheelhouse == tmp_path / "wheelhouse" and c.mirror == tmp_path / ".cache" / "image" / "wheels"
    assert c.built == c.mirror / "built"
    assert {"flash-attn", "mmcv", "canary"} <= c.ours
    assert opts.credentials is None and opts.hf_token is None and not opts.push
    assert opts.record_path == tmp_path / "wheelhouse" / "image-full-cu121.json"


def test_environment_then_command_line(tmp_path: Path) -> None:
    env = {"IMAGE_PROFILE": "core", "IMAGE_TORCH": "cu124", "IMAGE_BASE_IMAGE": "debian:12", "IMAGE_PUSH": "1"}
    opts = resolve_build([], env, cwd=tmp_path)
    c = opts.common
    assert (c.profile, c.torch.name, opts.base_image, opts.push) == ("core", "cu124", "debian:12", True)
    assert opts.tag == "steadydancer-comfyui:core-cu124"
    assert opts.common.lock_path == IMAGE_DIR / "requirements-core-cu124.lock"
    opts = resolve_build(["--profile", "full", "--base-image", "nvidia/cuda:12.4.1-runtime-ubuntu22.04", "--tag",
                          "registry.example/x/y:1"], env, cwd=tmp_path)  # fmt: skip
    assert opts.common.profile == "full" and opts.base_image.startswith("nvidia/cuda")
    assert opts.tag == "registry.example/x/y:1"


def test_lock_paths() -> None:
    assert lock_path_for("full", "cu121").name == "requirements.lock"
    assert lock_path_for("full", "cu124").name == "requirements-full-cu124.lock"
    assert lock_path_for("core", "cu124").name == "requirements-core-cu124.lock"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--profile", "ful"], {}, 'Unknown profile "ful".*Perhaps you meant "full"'),
        (["--torch", "cu122"], {}, 'Unknown torch build "cu122"'),
        (["--wheel-source", "wheelhose"], {}, 'Perhaps you meant "wheelhouse"'),
        (["--tag", "Bad Tag"], {}, "Bad image tag"),
        ([], {"IMAGE_PROFLE": "core"}, 'variable "IMAGE_PROFLE".*Perhaps you meant "IMAGE_PROFILE"'),
        ([], {"IMAGE_SOURCE_COMFYUI_KJNODE": "/x"}, 'Perhaps you meant "IMAGE_SOURCE_COMFYUI_KJNODES"'),
        ([], {"IMAGE_INDEX_USERNAME": "u"}, "Only one of IMAGE_INDEX_USERNAME and IMAGE_INDEX_PASSWORD"),
        (["--index-url", "https://u:p@index.example/simple"], {}, "carries credentials"),
        (["--index-url", "https://index.example/simple", "--wheel-source", "wheelhouse"], {}, "both given"),
        (["--profile", "core", "--bake-models", "fp8"], {}, "only into the full profile"),
        (["--frobnicate"], {}, 'Unknown option "--frobnicate"'),
        (["--source", "ComfyUI-KJNode=/tmp"], {}, 'source "ComfyUI-KJNode".*Perhaps you meant "ComfyUI-KJNodes"'),
        (["--source", "ComfyUI"], {}, "not NAME=DIR"),
    ],
)
def test_bad_settings(tmp_path: Path, argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_build(argv, env, cwd=tmp_path)


def test_credentials_and_token_are_kept_out_of_repr(tmp_path: Path) -> None:
    env = {"IMAGE_INDEX_USERNAME": "alice", "IMAGE_INDEX_PASSWORD": "s3cret-pw", "HF_TOKEN": "hf_s3cret"}
    opts = resolve_build(["--index-url", "https://index.example/simple"], env, cwd=tmp_path)
    assert opts.credentials is not None and opts.credentials.password == "s3cret-pw"
    assert opts.hf_token == "hf_s3cret"
    assert "s3cret" not in repr(opts)
    assert opts.common.index_url == "https://index.example/simple/"


def test_hf_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hf_from_file\n")
    opts = resolve_build(["--hf-token-file", "token"], {"HF_TOKEN": "hf_env"}, cwd=tmp_path)
    assert opts.hf_token == "hf_from_file"


def test_source_folders_precedence(tmp_path: Path) -> None:
    tree = tmp_path / "sources"
    for name in ("ComfyUI", "ComfyUI-GGUF", "unrelated"):
        (tree / name).mkdir(parents=True)
    (tmp_path / "kj").mkdir()
    (tmp_path / "gguf2").mkdir()
    env = {"IMAGE_SOURCES_DIR": str(tree), "IMAGE_SOURCE_COMFYUI_KJNODES": str(tmp_path / "kj")}
    opts = resolve_lock(["--source", f"ComfyUI-GGUF={tmp_path / 'gguf2'}"], env, cwd=tmp_path)
    dirs = opts.common.source_dirs
    assert dirs == {
        "ComfyUI": tree / "ComfyUI",
        "ComfyUI-GGUF": tmp_path / "gguf2",  # --source beats IMAGE_SOURCES_DIR
        "ComfyUI-KJNodes": tmp_path / "kj",
    }


def test_a_missing_source_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_lock(["--source", "ComfyUI=nowhere"], {}, cwd=tmp_path)


def test_lock_options(tmp_path: Path) -> None:
    opts = resolve_lock(["--profile", "full", "--torch", "cu124", "--without", "flash_attn", "--with", "canary",
                         "-o", "x.lock", "--check"], {}, cwd=tmp_path)  # fmt: skip
    assert opts.without == ("flash-attn",) and opts.with_ == ("canary",)
    assert opts.output == tmp_path / "x.lock" and opts.check
    assert opts.common.lock_path == IMAGE_DIR / "requirements-full-cu124.lock"


def test_torch_index_override_reaches_the_image(tmp_path: Path) -> None:
    opts = resolve_lock([], {"TORCH_INDEX_URL_CU121": "https://mirror.example/whl/cu121"}, cwd=tmp_path)
    assert opts.common.torch.index_url == "https://mirror.example/whl/cu121"
