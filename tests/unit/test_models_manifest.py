"""The model manifest: the shipped file is complete and honest, and every mistake in a manifest is explained."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from models import manifest
from models.errors import ConfigError

BRIEF_VARIANTS = {"fp8", "fp16", "gguf-q8_0", "gguf-q4_k_m", "pose-onnx", "pose-openmmlab"}


@pytest.fixture(scope="module")
def shipped() -> manifest.Manifest:
    return manifest.load(manifest.DEFAULT_MANIFEST)


def test_shipped_manifest_covers_every_variant_with_fp8_as_default(shipped: manifest.Manifest) -> None:
    assert set(shipped.variants) == BRIEF_VARIANTS
    assert shipped.default_variants == ("fp8",)
    for name in BRIEF_VARIANTS:
        assert shipped.select([name]), f"variant {name} selects no file"


def test_shipped_weight_variants_bring_encoders_vae_lora_and_pose(shipped: manifest.Manifest) -> None:
    for weights in ("fp8", "fp16", "gguf-q8_0", "gguf-q4_k_m"):
        folders = {f.folder for f in shipped.select([weights])}
        needed = {"diffusion_models", "text_encoders", "vae", "clip_vision", "loras", "detection", "annotators"}
        assert needed <= folders
        diffusion = [f for f in shipped.select([weights]) if f.folder == "diffusion_models"]
        assert len(diffusion) == 1, "exactly one SteadyDancer weight file per weight variant"
    names = {f.name for f in shipped.select(["pose-openmmlab"])}
    assert names == {"dwpose-dw-ll-ucoco-384-pth", "yolox-l-8x8-300e-coco-pth"}


def test_shipped_statuses_are_honest(shipped: manifest.Manifest) -> None:
    """Nothing is "verified" without a commit and a sha256; every entry says how its location was established
    and cites at least one public source."""
    for f in shipped.files:
        if f.status == "verified":
            assert f.sha256 and (f.pinned or not f.on_hub), f.name
        else:
            assert f.sha256 is None or not f.pinned, f.name
        assert f.location in ("confirmed", "inferred"), f.name
        assert f.sources and all(s.startswith("https://") for s in f.sources), f.name
    inferred = {f.name for f in shipped.files if f.location == "inferred"}
    assert inferred == {"steadydancer-14b-gguf-q8_0", "steadydancer-14b-gguf-q4_k_m"}


def test_shipped_manifest_invents_no_hashes_or_commits() -> None:
    raw = tomllib.loads(manifest.DEFAULT_MANIFEST.read_text())
    for name, table in raw["files"].items():
        assert "sha256" not in table and "size" not in table, f"{name}: only add what a public source confirms"
        assert table.get("revision", "main") == "main", name


def test_select_expands_includes_in_manifest_order(shipped: manifest.Manifest) -> None:
    assert shipped.expand(["fp8"]) == ("fp8", "pose-onnx")
    assert shipped.select([]) == shipped.select(["fp8"])
    both = shipped.select(["fp16", "pose-openmmlab"])
    assert [f.name for f in both] == [f.name for f in shipped.files if f in both]


def test_unknown_variant_suggests_the_closest(shipped: manifest.Manifest) -> None:
    with pytest.raises(ConfigError, match='Perhaps you meant "fp16"'):
        shipped.select(["fp61"])


BASE = """schema = 1
[variants.a]
default = true
[files.w]
repo = "org/model"
revision = "main"
path = "w.safetensors"
folder = "diffusion_models"
variants = ["a"]
status = "unverified"
"""


def load_text(tmp_path: Path, text: str) -> manifest.Manifest:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return manifest.load(path)


def test_minimal_manifest_and_paths(tmp_path: Path) -> None:
    m = load_text(tmp_path, BASE.replace('folder = "diffusion_models"', 'folder = "diffusion_models"\nsubdir = "X/Y"'))
    [f] = m.files
    assert str(f.relpath) == "diffusion_models/X/Y/w.safetensors"
    assert f.origin == "org/model@main:w.safetensors" and not f.pinned


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('status = "unverified"', 'status = "unverified"\nsha265 = "x"'), 'Perhaps you meant "sha256"'),
        (('variants = ["a"]', 'variants = ["b"]'), 'Unknown variant "b"'),
        (('repo = "org/model"', 'repo = "org/model"\nurl = "https://x/y"'), "either a hub file"),
        (('path = "w.safetensors"', 'path = "../w.safetensors"'), "not a clean relative path"),
        (('folder = "diffusion_models"', 'folder = "/abs"'), "not a clean relative path"),
        (('status = "unverified"', 'status = "verified"'), "without a pinned commit and a sha256"),
        (('status = "unverified"', 'status = "unverified"\nsha256 = "ABC"'), "64 lowercase hex"),
        (('status = "unverified"', 'status = "ok"'), 'must be "verified" or "unverified"'),
        (("schema = 1", "schema = 2"), "schema 2"),
        (('repo = "org/model"', 'repo = "model"'), '"owner/name"'),
        (('status = "unverified"', 'status = "unverified"\nlocation = "guessed"'), '"confirmed" or "inferred"'),
    ],
)
def test_manifest_mistakes_are_explained(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_text(tmp_path, BASE.replace(*change))


def test_a_plain_url_needs_a_hash(tmp_path: Path) -> None:
    text = BASE.replace('repo = "org/model"\nrevision = "main"\npath = "w.safetensors"', 'url = "https://e.org/w.pth"')
    with pytest.raises(ConfigError, match="could not be verified"):
        load_text(tmp_path, text)
    m = load_text(tmp_path, text.replace('status = "unverified"', 'status = "unverified"\nsha256-prefix = "d3bd2b23"'))
    assert m.files[0].filename == "w.pth" and not m.files[0].on_hub


def test_verified_requires_commit_and_sha(tmp_path: Path) -> None:
    text = BASE.replace('revision = "main"', f'revision = "{"a" * 40}"').replace(
        'status = "unverified"', f'status = "verified"\nsha256 = "{"b" * 64}"'
    )
    [f] = load_text(tmp_path, text).files
    assert f.pinned and f.status == "verified"


def test_two_entries_for_one_target_are_refused(tmp_path: Path) -> None:
    second = BASE.split("[files.w]")[1].replace('path = "w.safetensors"', 'path = "sub/w.safetensors"')
    with pytest.raises(ConfigError, match="both go to"):
        load_text(tmp_path, BASE + "[files.w2]" + second)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        manifest.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_text(tmp_path, "schema = ")
