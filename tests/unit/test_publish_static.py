"""Static index generation: pages rendered as pure functions, and the folder written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
from publishing import make_wheel

from wheels.errors import ConfigError, PublishError
from wheels.publish import static
from wheels.publish.simple import parse_html
from wheels.util import sha256_file

SHA = "cd" * 32


def test_project_page_links_quote_names_and_carry_hashes() -> None:
    f = static.StaticFile(
        "demo-1.0+cu124torch2.5-py3-none-any.whl", SHA, metadata_sha256="ef" * 32, requires_python=">=3.9"
    )
    page = static.render_project("Demo", [f])
    assert f'href="../../packages/demo-1.0%2Bcu124torch2.5-py3-none-any.whl#sha256={SHA}"' in page
    assert 'data-requires-python="&gt;=3.9"' in page
    assert (
        f'data-dist-info-metadata="sha256={"ef" * 32}"' in page and f'data-core-metadata="sha256={"ef" * 32}"' in page
    )
    assert "<title>Links for demo</title>" in page
    # what we write, we read back: the same parser publish uses on live indexes
    (link,) = parse_html(page, "https://bucket.example/simple/demo/")
    assert link.filename == f.filename and link.sha256 == SHA
    assert link.url == "https://bucket.example/packages/demo-1.0%2Bcu124torch2.5-py3-none-any.whl"


def test_root_page_lists_normalised_projects_once() -> None:
    page = static.render_root(["Flash_Attn", "flash-attn", "mmcv"])
    assert page.count('href="flash-attn/"') == 1 and 'href="mmcv/"' in page


def test_write_builds_the_tree_and_a_rerun_keeps_old_files(tmp_path: Path) -> None:
    a = make_wheel(tmp_path / "w", "demo", "1.0+cu124torch2.5")
    b = make_wheel(tmp_path / "w", "Other_Pkg", "2.0")
    root = tmp_path / "index"
    entries = static.write(root, {a.name: a}, static.read_existing(root))
    assert [e.filename for e in entries] == [a.name]
    assert (root / "packages" / a.name).read_bytes() == a.read_bytes()
    metadata = (root / "packages" / f"{a.name}.metadata").read_bytes()
    assert metadata.startswith(b"Metadata-Version: 2.1")
    assert entries[0].metadata_sha256 == hashlib.sha256(metadata).hexdigest()
    assert entries[0].requires_python == ">=3.9"
    assert json.loads((root / static.MARKER).read_text())["files"] == {a.name: sha256_file(a)}

    existing = static.read_existing(root)
    static.write(root, {b.name: b}, existing)
    assert sorted(p.name for p in (root / "packages").glob("*.whl")) == sorted([a.name, b.name])
    assert (root / "simple" / "other-pkg" / "index.html").exists()
    assert 'href="demo/"' in (root / "simple" / "index.html").read_text()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".index.")]
    assert leftovers == []  # no staging or old trees left beside the index
    assert oct((root / "packages" / a.name).stat().st_mode & 0o777) == "0o644"


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "important.txt").write_text("not ours")
    with pytest.raises(ConfigError, match="not a static index written by this pipeline"):
        static.read_existing(root)


def test_detects_a_damaged_index(tmp_path: Path) -> None:
    a = make_wheel(tmp_path / "w", "demo", "1.0")
    root = tmp_path / "index"
    static.write(root, {a.name: a}, {})
    with (root / "packages" / a.name).open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(PublishError, match="damaged"):
        static.read_existing(root)


def test_recovers_the_old_tree_after_a_crash_between_renames(tmp_path: Path) -> None:
    a = make_wheel(tmp_path / "w", "demo", "1.0")
    root = tmp_path / "index"
    static.write(root, {a.name: a}, {})
    os.replace(root, tmp_path / ".index.old-abc123")  # as if killed right after the first rename
    assert static.read_existing(root) == {a.name: sha256_file(a)}
    assert root.exists()


def test_a_failed_write_leaves_the_old_index_untouched(tmp_path: Path) -> None:
    a = make_wheel(tmp_path / "w", "demo", "1.0")
    root = tmp_path / "index"
    static.write(root, {a.name: a}, {})
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    broken = tmp_path / "w" / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(zipfile.BadZipFile):
        static.write(root, {broken.name: broken}, static.read_existing(root))
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".index.")] == []
