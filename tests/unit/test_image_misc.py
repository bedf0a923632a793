"""Small pure pieces: the Debian mirror, the base image key, BuildKit progress, the bench section, lock inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from image import lock, record, sources
from image.config import SourcePin, load_nodes
from image.debootstrap import BaseSpec, debian_mirror
from image.docker import parse_progress
from image.options import resolve_lock
from wheels.errors import ConfigError

DEBIAN_SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_debian_mirror_from_deb822() -> None:
    assert debian_mirror(DEBIAN_SOURCES, "bookworm") == "http://mirror.example/debian"
    assert debian_mirror(DEBIAN_SOURCES, "bookworm-security") == "http://mirror.example/debian-security"
    assert debian_mirror(DEBIAN_SOURCES, "trixie") is None


def test_base_image_key_is_stable_and_content_addressed() -> None:
    a = BaseSpec(mirror="http://m/debian")
    assert a.key == BaseSpec(mirror="http://m/debian").key
    assert a.key != BaseSpec(mirror="http://other/debian").key
    assert a.key != BaseSpec(mirror="http://m/debian", include=("python3.11",)).key
    assert a.tag == f"steadydancer-base:bookworm-{a.key}"


PROGRESS = """#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#4 [base 1/2] FROM docker.io/library/steadydancer-base:bookworm-x
#4 DONE 0.1s
#5 [base 2/2] RUN set -eux;     apt-get update
#5 CACHED
#7 [python-env 1/2] RUN --mount=type=bind,source=tools/uv,target=/usr/local/bin/uv     set -eux;
#7 12.3 Resolved 22 packages
#7 DONE 202.9s
#9 [core-tree  1/10] COPY smoke/ /opt/smoke/
#9 ERROR: failed to compute cache key
"""


def test_buildkit_progress_steps_and_their_states() -> None:
    steps = parse_progress(PROGRESS.splitlines())
    assert [(s.id, s.stage, s.state) for s in steps] == [
        (5, "base", "CACHED"),
        (7, "python-env", "DONE 202.9s"),
        (9, "core-tree", "ERROR: failed to compute cache key"),
    ]
    assert steps[0].cached and steps[1].seconds == 202.9 and steps[2].seconds is None


def _record(n: int) -> dict:
    return {
        "date": f"2026-11-28T14:{n:02d}:00+00:00",
        "tag": f"t:{n}",
        "profile": "core",
        "torch": "cu124",
        "wheels_from": "embedded index",
        "size_bytes": 5 * 2**30,
        "build": {"seconds": 299.0, "steps": 6, "cached_steps": 0},
        "smoke": {"ok": True, "checks": [{"name": "torch", "ok": True}, {"name": "x", "ok": None, "skipped": True}]},
    }


def test_bench_section_is_appended_capped_and_leaves_the_rest(tmp_path: Path) -> None:
    bench = tmp_path / "results.md"
    bench.write_text("# Benchmarks\n\n## Wheels\n\nkeep me\n")
    for n in range(record.KEEP_ROWS + 3):
        record.update_bench(bench, _record(n))
    text = bench.read_text()
    assert "keep me" in text and text.count(record.BEGIN) == 1
    rows = [line for line in text.splitlines() if line.startswith("| 2026")]
    assert len(rows) == record.KEEP_ROWS and rows[-1].startswith("| 2026-11-28 14:32 | `t:32`")
    assert "5.0 GiB" in rows[-1] and "4m59s" in rows[-1] and "passed 1/2 (skipped: x)" in rows[-1]


def test_layers_oldest_first_in_bytes() -> None:
    history = [{"CreatedBy": "CMD", "Size": "0"}, {"CreatedBy": "RUN uv", "Size": "5368709120"}]
    assert record.layers(history) == [
        {"created_by": "RUN uv", "size_bytes": 5368709120},
        {"created_by": "CMD", "size_bytes": 0},
    ]


def test_requirement_files_are_sanitized(tmp_path: Path) -> None:
    src = tmp_path / "requirements.txt"
    src.write_text("--extra-index-url https://download.pytorch.org/whl/cu118\nnumpy  # comment\n\nscipy>=1.10\n")
    out = lock.sanitize("X/requirements.txt", src, tmp_path / "out.txt")
    assert out.read_text() == "numpy\nscipy>=1.10\n"
    for bad, message in (("-r other.txt", "includes"), ("git+https://github.com/x/y", "a URL")):
        src.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=message):
            lock.sanitize("X/requirements.txt", src, tmp_path / "out.txt")


def test_torch_family_is_pinned_to_the_builds_local_version(tmp_path: Path) -> None:
    cu121 = resolve_lock(["--torch", "cu121"], {}, cwd=tmp_path).common
    assert lock.torch_family_pins(cu121) == [
        "torch==2.5.1+cu121",
        "torchvision==0.20.1+cu121",
        "torchaudio==2.5.1+cu121",
    ]
    cu124 = resolve_lock(["--torch", "cu124"], {}, cwd=tmp_path).common
    assert lock.torch_family_pins(cu124) == []  # PyPI's torch is the cu124 build, without a local label


def test_lock_command_line_says_how_to_remake_it(tmp_path: Path) -> None:
    opts = resolve_lock(["--profile", "full", "--torch", "cu124", "--without", "mmcv"], {}, cwd=tmp_path)
    assert lock.command_line(opts) == "nox -s lock -- --profile full --torch cu124 --without mmcv"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "upstream"
    path.mkdir()
    git("init", "-q", cwd=path)
    (path / "requirements.txt").write_text("numpy\n")
    (path / "__init__.py").write_text("")
    git("add", ".", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one", cwd=path)
    return path, git("rev-parse", "HEAD", cwd=path)


def test_fetch_by_commit_is_cached_and_strips_git(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, commit = repo
    pin = SourcePin("Pack", "node", str(path), commit, "test", None)
    tree = sources.fetch(pin, tmp_path / "cache")
    assert tree.origin == "fetched" and tree.matches_pin and not (tree.path / ".git").exists()
    assert tree.requirement_files() == [("Pack/requirements.txt", tree.path / "requirements.txt")]
    (path / "requirements.txt").write_text("changed upstream\n")
    assert sources.fetch(pin, tmp_path / "cache").path == tree.path  # from the cache, no second fetch


def test_fetch_of_an_unknown_commit_fails_with_the_override_hint(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = repo
    pin = SourcePin("Pack", "node", str(path), "0" * 40, "test", None)
    with pytest.raises(Exception, match="IMAGE_SOURCE_PACK=/path or --source Pack=/path"):
        sources.fetch(pin, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "sources").glob("Pack-*"))  # nothing half-fetched left behind


def test_a_local_checkout_at_another_commit_is_recorded_as_such(repo: tuple[Path, str]) -> None:
    path, commit = repo
    tree = sources.local(SourcePin("Pack", "node", "x", "1" * 40, "test", None), path)
    assert tree.commit == commit and not tree.matches_pin
    assert json.loads(json.dumps(tree.record()))["matches_pin"] is False
    (path / "requirements.txt").write_text("dirty\n")
    assert sources.local(SourcePin("Pack", "node", "x", commit, "test", None), path).dirty


def test_listed_requirement_files_must_exist(tmp_path: Path) -> None:
    pin = SourcePin("ComfyUI", "comfyui", "x", "1" * 40, "t", ("requirements.txt", "extra.txt"))
    (tmp_path / "requirements.txt").write_text("x\n")
    with pytest.raises(Exception, match="has no extra.txt"):
        sources.local(pin, tmp_path).requirement_files()
    assert load_nodes().comfyui.requirements == ("requirements.txt",)


def test_a_local_folder_is_identified_by_commit_or_by_content(repo: tuple[Path, str], tmp_path: Path) -> None:
    path, commit = repo
    pin = SourcePin("Pack", "node", "x", commit, "test", None)
    assert sources.local(pin, path).identity() == commit
    plain = tmp_path / "plain"
    shutil.copytree(path, plain, ignore=shutil.ignore_patterns(".git"))
    first = sources.local(pin, plain).identity()
    assert first.startswith("tree-sha256:")
    (plain / "requirements.txt").write_text("numpy\nscipy\n")
    assert sources.local(pin, plain).identity() != first


def _gated_wheelhouse(root: Path, filename: str, sha256: str, build: str = "cu124", verdict: str = "pass") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / filename).write_bytes(b"wheel")
    record = {
        "target": f"x-{build}", "filename": filename, "sha256": sha256, "size": 5, "package": filename.split("-")[0],
        "version": filename.split("-")[1], "label": "", "torch": {"build": build}, "cuda": "12.4",
        "python_tag": "cp311", "platform_tag": "manylinux_2_34_x86_64", "cuda_archs": ["9.0"], "cxx11_abi": False,
        "cache_key": "k", "flavour": None, "toolchain": {}, "build": {}, "gate": {"verdict": verdict}, "created": "now",
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps({"schema": 1, "records": {record["target"]: record}}))
    return root


def test_ours_are_the_pins_a_gated_wheel_satisfies(tmp_path: Path) -> None:
    """A matrix package that the wheelhouse has not gated (xformers, fetched from PyPI) is mirrored as third-party."""
    from image.build import split_ours
    from image.options import resolve_build
    from image.reqs import Lock, Pin

    wheelhouse = _gated_wheelhouse(tmp_path / "wh", "canary-0.1.0+cu124torch2.5-cp311-cp311-linux_x86_64.whl", "c" * 64)
    pins = (Pin("canary", "0.1.0+cu124torch2.5", ("c" * 64,)), Pin("xformers", "0.0.29.post1", ("d" * 64,)),
            Pin("torch", "2.5.1", ("e" * 64,)))  # fmt: skip
    opts = resolve_build(["--torch", "cu124", "--wheelhouse", str(wheelhouse)], {}, cwd=tmp_path)
    third, mine = split_ours(opts, Lock(pins, {}))
    assert [p.name for p in mine] == ["canary"] and [p.name for p in third] == ["xformers", "torch"]
    # Ungated, or for another torch build: not ours.
    for kwargs in ({"verdict": "fail"}, {"build": "cu121"}):
        other = _gated_wheelhouse(
            tmp_path / str(kwargs), "canary-0.1.0-cp311-cp311-linux_x86_64.whl", "c" * 64, **kwargs
        )
        opts = resolve_build(["--torch", "cu124", "--wheelhouse", str(other)], {}, cwd=tmp_path)
        assert split_ours(opts, Lock(pins, {}))[1] == []
    # Our wheels from an index: the matrix's names decide the layers.
    opts = resolve_build(["--torch", "cu124", "--index-url", "https://i.example/simple"], {}, cwd=tmp_path)
    assert [p.name for p in split_ours(opts, Lock(pins, {}))[1]] == ["canary", "xformers"]
