"""The in-image smoke test's own logic: which checks run per profile, skips, the compiler search, the report."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from image import smoke


def fake_program(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_compiler_search_finds_plain_versioned_and_triplet_names(tmp_path: Path) -> None:
    for name in ("gcc-12", "x86_64-linux-gnu-g++-12", "nvcc", "python3"):
        fake_program(tmp_path / "bin" / name)
    found = smoke._compilers_on([str(tmp_path / "bin")])
    assert [Path(p).name for p in found] == ["gcc-12", "nvcc", "x86_64-linux-gnu-g++-12"]


def test_no_compiler_check_fails_on_nvcc_inside_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "venv"
    fake_program(prefix / "lib" / "python3.11" / "site-packages" / "nvidia" / "cuda_nvcc" / "bin" / "nvcc")
    monkeypatch.setattr(smoke.sys, "prefix", str(prefix))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(smoke.CheckFailed, match="compilers present: .*cuda_nvcc/bin/nvcc"):
        smoke.check_no_compiler({})


def _stub_checks(monkeypatch: pytest.MonkeyPatch, failing: set[str]) -> None:
    def make(name: str):  # noqa: ANN202
        def check(expect: dict) -> dict:
            if name in failing:
                raise smoke.CheckFailed(f"{name} broke")
            return {"name": name}

        return check

    monkeypatch.setattr(smoke, "CHECKS", {n: (p, make(n)) for n, (p, _) in smoke.CHECKS.items()})


def test_profiles_select_checks_and_skips_are_reported_not_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_checks(monkeypatch, failing=set())
    core = smoke.run({"profile": "core"})
    assert [c["name"] for c in core["checks"]] == ["python", "torch", "ours", "no-compiler"] and core["ok"]
    full = smoke.run({"profile": "full", "skip": ["flash_attn", "mmcv.ops"]})
    skipped = [c["name"] for c in full["checks"] if c.get("skipped")]
    assert skipped == ["flash_attn", "mmcv.ops"] and full["ok"]
    assert {"comfyui", "onnxruntime", "xformers"} <= {c["name"] for c in full["checks"] if c["ok"]}


def test_a_failed_check_fails_the_run_with_its_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _stub_checks(monkeypatch, failing={"torch"})
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"profile": "core"}))
    report = tmp_path / "report.json"
    assert smoke.main(["--expect", str(expect), "--report", str(report), "--json"]) == 1
    out = capsys.readouterr().out
    assert "smoke: FAILED  torch" in out and "torch broke" in out
    line = [x for x in out.splitlines() if x.startswith("smoke-report: ")][-1]
    assert json.loads(line.split(": ", 1)[1]) == json.loads(report.read_text())


def test_unknown_skip_is_an_error() -> None:
    with pytest.raises(SystemExit, match="unknown checks to skip"):
        smoke.run({"profile": "core", "skip": ["tourch"]})


def test_report_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """No timings: an unchanged image gives an unchanged report (and so a cached final layer)."""
    _stub_checks(monkeypatch, failing=set())
    assert smoke.run({"profile": "full"}) == smoke.run({"profile": "full"})


def _comfyui_log(monkeypatch: pytest.MonkeyPatch, log: str, returncode: int = 0) -> None:
    class Done:
        pass

    done = Done()
    done.returncode, done.stdout = returncode, log  # type: ignore[attr-defined]
    monkeypatch.setattr(smoke.subprocess, "run", lambda *a, **k: done)


LOADED = "\x1b[32m[INFO]\x1b[0m    0.0 seconds: /opt/ComfyUI/custom_nodes/ComfyUI-GGUF"  # as ComfyUI logs it
FAILED = "   1.2 seconds (IMPORT FAILED): /opt/ComfyUI/custom_nodes/ComfyUI-KJNodes"


def test_comfyui_check_reads_comfyuis_own_import_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _comfyui_log(monkeypatch, f"ComfyUI version: 0.33.0\nImport times for custom nodes:\n{LOADED}\n")
    details = smoke.check_comfyui({"comfyui": str(tmp_path), "nodes": ["ComfyUI-GGUF"]})
    assert details["version"] == "0.33.0" and details["node_packs_loaded"] == ["ComfyUI-GGUF"]


@pytest.mark.parametrize(
    ("log", "returncode", "message"),
    [
        (f"{LOADED}\n{FAILED}", 0, "node packs not loaded: ComfyUI-KJNodes"),
        (LOADED, 0, "node packs not loaded: ComfyUI-KJNodes"),  # absent from the report: never even tried
        (f"{LOADED}\nTraceback ...", 1, "ComfyUI exited with 1"),
        (
            f"{LOADED}\n\x1b[33m[WARNING]\x1b[0m IMPORT FAILED: nodes_hunyuan3d.py",
            0,
            "did not import: nodes_hunyuan3d.py",
        ),
    ],
)
def test_comfyui_check_fails_on_a_pack_that_did_not_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, log: str, returncode: int, message: str
) -> None:
    _comfyui_log(monkeypatch, log, returncode)
    with pytest.raises(smoke.CheckFailed, match=message):
        smoke.check_comfyui({"comfyui": str(tmp_path), "nodes": ["ComfyUI-GGUF", "ComfyUI-KJNodes"]})
