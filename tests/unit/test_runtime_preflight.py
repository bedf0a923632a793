"""The GPU preflight's verdicts and messages, one per way a machine can fail the image, driven through stub
``torch`` / ``flash_attn`` / ``mmcv`` modules (the real-torch run on this GPU-less machine is in
tests/integration/test_runtime_comfyui.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "image" / "runtime"

GOOD_TORCH = """\
__version__ = "2.5.1+cu124"
float16 = "float16"
class version:
    cuda = "12.4"
class _T:
    def __init__(self, v): self.v = v
    def __mul__(self, k): return _T(self.v * k)
    def sum(self): return self
    def item(self): return float(self.v)
def ones(n, device=None): return _T(n)
def randn(*shape, device=None, dtype=None): return _T(0)
def tensor(data, device=None): return data
class cuda:
    init = staticmethod(lambda: None)
    device_count = staticmethod(lambda: 1)
    get_device_name = staticmethod(lambda i: "NVIDIA H100 80GB HBM3")
    get_device_capability = staticmethod(lambda i: (9, 0))
    synchronize = staticmethod(lambda: None)
"""
GOOD_FLASH = {"flash_attn/__init__.py": '__version__ = "2.7.4.post1"\ndef flash_attn_func(q, k, v): return q\n'}
GOOD_MMCV = {
    "mmcv/__init__.py": '__version__ = "2.1.0"\n',
    "mmcv/_ext.py": "",
    "mmcv/ops.py": "def nms(boxes, scores, thr): return boxes\n",
}


def run(tmp_path: Path, files: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{tmp_path}{os.pathsep}{RUNTIME}"}
    return subprocess.run(
        [sys.executable, "-m", "comfy_worker.preflight", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_good_machine_passes(tmp_path: Path) -> None:
    done = run(tmp_path, {"torch/__init__.py": GOOD_TORCH, **GOOD_FLASH, **GOOD_MMCV})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "ok   torch: torch 2.5.1+cu124 (CUDA build 12.4)",
        "ok   cuda: CUDA 12.4: 1 device(s), NVIDIA H100 80GB HBM3 (sm_90)",
        "ok   flash_attn: flash_attn 2.7.4.post1: kernel ran",
        "ok   mmcv: mmcv 2.1.0: _ext loaded, nms ran on the GPU",
        "GPU preflight passed",
    ]


@pytest.mark.parametrize(
    ("files", "needles"),
    [
        (
            {"torch/__init__.py": "raise ImportError('libcudart.so.12: cannot open shared object file')"},
            ["FAILED: torch does not import", "libcudart.so.12", "rebuild the image"],
        ),
        (
            {"torch/__init__.py": GOOD_TORCH.replace('cuda = "12.4"', "cuda = None")},
            ["FAILED: torch 2.5.1+cu124 is a CPU-only build", "SKIP_GPU_PREFLIGHT=1"],
        ),
        (
            {"torch/__init__.py": GOOD_TORCH.replace("lambda: 1)", "lambda: 0)")},
            [
                "FAILED: CUDA is not usable: RuntimeError: torch sees no CUDA device",
                "Why: GPU device nodes:",
                "driver >= 550 for CUDA 12.4",
            ],
        ),
        (
            {"torch/__init__.py": GOOD_TORCH},
            ["FAILED: flash_attn does not import: ModuleNotFoundError", "nox -s wheels -- flash-attn"],
        ),
        (
            {
                "torch/__init__.py": GOOD_TORCH,
                "flash_attn/__init__.py": (
                    '__version__ = "2.7.4.post1"\n'
                    "def flash_attn_func(q, k, v): raise RuntimeError('CUDA error: no kernel image is available')\n"
                ),
            },
            ["cannot run on this GPU (sm_90): CUDA error: no kernel image", "cuda-archs"],
        ),
        (
            {"torch/__init__.py": GOOD_TORCH, **GOOD_FLASH, "mmcv/__init__.py": '__version__ = "2.1.0"\n'},
            ["FAILED: mmcv's compiled ops (mmcv._ext) do not import", "mmcv-lite", "nox -s wheels -- mmcv"],
        ),
    ],
)
def test_each_failure_says_what_to_do(tmp_path: Path, files: dict[str, str], needles: list[str]) -> None:
    done = run(tmp_path, files)
    assert done.returncode == 12, done.stdout + done.stderr
    for needle in needles:
        assert needle in done.stdout, done.stdout
    assert "Fix:" in done.stdout


def test_extension_checks_can_be_left_out(tmp_path: Path) -> None:
    done = run(tmp_path, {"torch/__init__.py": GOOD_TORCH}, "--skip", "flash_attn", "--skip", "mmcv")
    assert done.returncode == 0 and "GPU preflight passed" in done.stdout
    assert "flash_attn" not in done.stdout
