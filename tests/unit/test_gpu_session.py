"""The gpu_test session's own logic, on a machine without a GPU: it refuses to report what it did not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wheels import gpu
from wheels.errors import GpuError
from wheels.manifest import Record


def _record(target: str, verdict: str = "pass", build: str = "cu124", package: str = "canary") -> Record:
    return Record(
        target=target, filename=f"{target}.whl", sha256="0" * 64, size=1, package=package, version="0.1.0+x",
        label="x", torch={"version": "2.5.1+cu124", "cuda": "12.4", "cxx11_abi": False, "build": build}, cuda="12.4",
        python_tag="cp311", platform_tag="linux_x86_64", cuda_archs=["9.0"], cxx11_abi=False, cache_key="k",
        flavour=None, toolchain={}, build={}, gate={"verdict": verdict}, created="now",
    )


def _wheelhouse(tmp_path: Path, records: list[Record]) -> Path:
    data = {"schema": 1, "records": {r.target: r.to_dict() for r in records}}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return tmp_path


def test_select_keeps_only_gated_wheels_and_filters_by_glob() -> None:
    records = {r.target: r for r in (_record("canary-cu124"), _record("mmcv-cu124", "fail"), _record("canary-system"))}
    assert [r.target for r in gpu.select(records, [])] == ["canary-cu124", "canary-system"]
    assert [r.target for r in gpu.select(records, ["*-system"])] == ["canary-system"]


def test_without_a_gpu_it_fails_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)  # no nvidia-smi
    wheelhouse = _wheelhouse(tmp_path, [_record("canary-cu124")])
    with pytest.raises(GpuError, match="No GPU is visible"):
        gpu.main(["--wheelhouse", str(wheelhouse)])
    assert not (wheelhouse / "gpu-report.json").exists(), "a report was written for tests that never ran"


def test_without_a_gpu_allow_no_gpu_skips_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    results = tmp_path / "results.md"
    wheelhouse = _wheelhouse(tmp_path, [_record("canary-cu124")])
    assert gpu.main(["--wheelhouse", str(wheelhouse), "--allow-no-gpu", "--results-md", str(results)]) == 0
    assert "nothing was tested" in capsys.readouterr().err
    assert not results.exists()


def test_no_gated_wheels_is_an_error(tmp_path: Path) -> None:
    wheelhouse = _wheelhouse(tmp_path, [_record("mmcv-cu124", "fail")])
    with pytest.raises(Exception, match="No gated wheels"):
        gpu.main(["--wheelhouse", str(wheelhouse)])


def test_markdown_summary_carries_gpu_torch_hashes_and_numbers(tmp_path: Path) -> None:
    report = {
        "date": "2026-11-28T00:00:00+00:00",
        "results": [{
            "target": "flash-attn-hdim128-system", "wheel": "fa.whl", "sha256": "ab" * 32, "passed": True,
            "pytest_exit": 0, "torch": {"version": "2.11.0+cu130", "cuda": "13.0"},
            "gpu": {"smi_name": "NVIDIA H200", "capability": "9.0", "driver": "580"},
            "measurements": [
                {"test": "t", "name": "fwd err", "value": 1e-3, "unit": "abs", "torch_lowp_error": 2e-3},
                {"test": "t", "name": "forward TFLOP/s", "value": 500.0, "unit": "TFLOP/s", "ratio": 1.01},
            ],
        }],
    }
    out = tmp_path / "results.md"
    gpu.append_markdown(out, report)
    text = out.read_text()
    for needle in ("NVIDIA H200", "driver 580", "2.11.0+cu130", "ab" * 32, "forward TFLOP/s", "1 comparisons"):
        assert needle in text
