"""The staged build context: exactly what the Dockerfile reads, and nothing a layer should not hold."""

from __future__ import annotations

import json
import os
from pathlib import Path

from image import context, sources
from image.config import SourcePin
from image.reqs import Pin

H = "a" * 64


def test_context_layout_for_a_wheelhouse_build(tmp_path: Path) -> None:
    comfy = tmp_path / "src" / "ComfyUI"
    (comfy / ".git").mkdir(parents=True)
    (comfy / "main.py").write_text("print()\n")
    (comfy / "__pycache__").mkdir()
    (comfy / "__pycache__" / "x.pyc").write_bytes(b"\0")
    pack = tmp_path / "src" / "PackA"
    pack.mkdir()
    (pack / "__init__.py").write_text("")
    trees = [
        sources.SourceTree(SourcePin("ComfyUI", "comfyui", "r", "1" * 40, "t", None), comfy, "local", None),
        sources.SourceTree(SourcePin("PackA", "node", "r", "2" * 40, "t", None), pack, "local", None),
    ]
    torch_whl = tmp_path / "wheels" / "torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl"
    canary_whl = tmp_path / "wheels" / "canary-0.1.0-cp311-cp311-manylinux_2_34_x86_64.whl"
    torch_whl.parent.mkdir()
    torch_whl.write_bytes(b"t")
    canary_whl.write_bytes(b"c")
    torch, canary = Pin("torch", "2.5.1", (H,)), Pin("canary", "0.1.0", (H,))
    ctx = context.stage(
        tmp_path / "ctx",
        third=[torch],
        ours=[canary],
        expect={"profile": "full", "ours": ["canary"]},
        trees=trees,
        wheel_files={torch: torch_whl, canary: canary_whl},
    )
    assert (ctx / "lock" / "thirdparty.txt").read_text() == f"torch==2.5.1 --hash=sha256:{H}\n"
    assert (ctx / "lock" / "ours.txt").read_text() == f"canary==0.1.0 --hash=sha256:{H}\n"
    assert os.access(ctx / "tools" / "uv", os.X_OK) and (ctx / "tools" / "uv").read_bytes()[:4] == b"\x7fELF"
    assert (ctx / "wheels" / "thirdparty" / torch_whl.name).samefile(torch_whl)  # a hard link, not a copy
    assert (ctx / "wheels" / "ours" / canary_whl.name).exists()
    assert (ctx / "sources" / "ComfyUI" / "main.py").exists()
    assert not (ctx / "sources" / "ComfyUI" / ".git").exists()
    assert not (ctx / "sources" / "ComfyUI" / "__pycache__").exists()
    assert (ctx / "sources" / "nodes" / "PackA" / "__init__.py").exists()
    assert json.loads((ctx / "smoke" / "expect.json").read_text())["ours"] == ["canary"]
    assert (ctx / "smoke" / "smoke.py").read_text() == context.SMOKE.read_text()
    assert (ctx / "runtime").is_dir() and (ctx / "models").is_dir()


def test_an_index_build_stages_no_wheels_and_restaging_replaces_everything(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "stale").mkdir(parents=True)
    context.stage(ctx, third=[Pin("torch", "2.5.1", (H,))], ours=[], expect={"profile": "core"})
    assert not (ctx / "stale").exists()
    assert list((ctx / "wheels" / "thirdparty").iterdir()) == [] and list((ctx / "wheels" / "ours").iterdir()) == []
    assert (ctx / "lock" / "ours.txt").read_text() == ""
    assert not (ctx / "sources").exists()
