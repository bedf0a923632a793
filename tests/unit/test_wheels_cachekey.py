"""Cache keys: the same inputs give the same key; every input that changes the product changes it; names do not."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from wheels import cachekey, sources
from wheels.cachekey import cache_key, key_inputs
from wheels.options import REPO_ROOT, Source, Target, load_matrix
from wheels.recipes.canary import CanaryRecipe

TOOLCHAIN = {"nvcc": "12.4.131", "host_cxx": "c++ (Debian 12.2.0-14) 12.2.0"}
TORCH = {"build": "cu124", "version": "2.5.1", "cuda": "12.4"}


@pytest.fixture
def targets(matrix: Callable[..., Path]) -> dict[str, Target]:
    return load_matrix(matrix(), {})[1]


def key(target: Target, **changes: object) -> str:
    args: dict[str, object] = {
        "source_hash": "s" * 64,
        "toolchain": TOOLCHAIN,
        "torch": TORCH,
        "python": "3.11",
        "backend": "local",
    }
    args.update(changes)
    return cache_key(key_inputs(target, **args))  # type: ignore[arg-type]


def test_same_inputs_same_key(targets: dict[str, Target]) -> None:
    t = targets["canary-cu124"]
    assert key(t) == key(t) == key(dataclasses.replace(t))
    assert len(key(t)) == 64 and int(key(t), 16) >= 0


def test_the_key_is_stable_across_dict_order() -> None:
    assert cache_key({"a": 1, "b": {"x": 1, "y": 2}}) == cache_key({"b": {"y": 2, "x": 1}, "a": 1})


@pytest.mark.parametrize(
    "change",
    [
        {"source_hash": "t" * 64},
        {"toolchain": {**TOOLCHAIN, "nvcc": "12.4.99"}},
        {"toolchain": {**TOOLCHAIN, "host_cxx": "c++ 13.2.0"}},
        {"torch": {**TORCH, "version": "2.5.0"}},
        {"torch": {**TORCH, "cuda": "12.1"}},
        {"torch": {**TORCH, "cxx11_abi": True}},
        {"python": "3.12"},
        {"backend": "container"},
    ],
)
def test_each_argument_changes_the_key(targets: dict[str, Target], change: dict[str, object]) -> None:
    t = targets["canary-cu124"]
    assert key(t, **change) != key(t)


@pytest.mark.parametrize(
    "change",
    [
        {"cuda_archs": ("8.0",)},
        {"cuda_archs": ("8.0", "9.0+PTX")},
        {"version": "0.1.1"},
        {"package": "canary2"},
        {"flavour": "other"},
        {"source": Source(kind="path", location="elsewhere")},  # via source_hash only: the same bytes are the same
    ],
)
def test_each_target_field_changes_the_key(targets: dict[str, Target], change: dict[str, object]) -> None:
    t = targets["canary-cu124"]
    changed = key(dataclasses.replace(t, **change))
    if "source" in change:
        assert changed == key(t)  # where the source lives is not what it is: the hash decides
    else:
        assert changed != key(t)


def test_recipe_flags_change_the_key(targets: dict[str, Target]) -> None:
    """flash-attn picks its -gencode flags from FLASH_ATTN_CUDA_ARCHS: a flag the key must cover."""
    fa = targets["fa-hdim128-cu124"]
    inputs = key_inputs(fa, source_hash="s", toolchain=TOOLCHAIN, torch=TORCH, python="3.11")
    assert inputs["flags"]["FLASH_ATTN_CUDA_ARCHS"] == "80;90"
    assert inputs["recipe"]["flavour"] == "hdim128"
    assert key(fa) != key(dataclasses.replace(fa, flavour="full"))


def test_recipe_code_and_protocol_change_the_key(targets: dict[str, Target], monkeypatch: pytest.MonkeyPatch) -> None:
    t = targets["canary-cu124"]
    before = key(t)
    monkeypatch.setattr(CanaryRecipe, "fingerprint", lambda self: "a changed recipe")
    after_recipe = key(t)
    monkeypatch.setattr(cachekey, "BUILD_PROTOCOL", cachekey.BUILD_PROTOCOL + 1)
    assert len({before, after_recipe, key(t)}) == 3


def test_names_and_labels_do_not_change_the_key(targets: dict[str, Target]) -> None:
    """The target's name and default flag are labels for a build, not part of it: an alias shares the key.
    (The wheel's local version label is derived from the installed torch, so it is not an input either.)"""
    t = targets["canary-cu124"]
    assert key(dataclasses.replace(t, name="my-alias", default=True)) == key(t)
    inputs = key_inputs(t, source_hash="s", toolchain=TOOLCHAIN, torch=TORCH, python="3.11")
    assert "name" not in inputs and "label" not in inputs and t.name not in repr(inputs)


def test_sdist_source_hash_is_its_pin(targets: dict[str, Target]) -> None:
    assert sources.source_hash(targets["fa"]) == "ab" * 32


def _folder_target(targets: dict[str, Target], folder: Path) -> Target:
    return dataclasses.replace(targets["canary-cu124"], source=Source(kind="path", location=str(folder)))


def test_folder_source_hash_follows_content_not_mtime(targets: dict[str, Target], tmp_path: Path) -> None:
    folder = tmp_path / "canary"
    shutil.copytree(REPO_ROOT / "wheels" / "canary", folder, ignore=shutil.ignore_patterns("build", "__pycache__"))
    t = _folder_target(targets, folder)
    original = sources.source_hash(t)
    kernel = folder / "csrc" / "saxpy.cu"
    kernel.touch()  # a new mtime alone is not a new source
    assert sources.source_hash(t) == original
    # Build products and caches inside the folder are not source either.
    for junk in ("build/temp/x.o", "dist/c.whl", "canary.egg-info/PKG-INFO", "canary/__pycache__/x.pyc"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("junk")
    assert sources.source_hash(t) == original
    kernel.write_text(kernel.read_text() + "// touched\n")
    touched = sources.source_hash(t)
    assert touched != original
    assert key(t, source_hash=touched) != key(t, source_hash=original)
    (folder / "setup.py").chmod(0o755)  # the exec bit is content too (scripts)
    assert sources.source_hash(t) != touched


def test_missing_source_folder(targets: dict[str, Target], tmp_path: Path) -> None:
    from wheels.errors import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        sources.source_hash(_folder_target(targets, tmp_path / "gone"))
