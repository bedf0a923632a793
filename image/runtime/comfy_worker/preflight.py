"""GPU preflight, run by start.sh before ComfyUI: ``python -m comfy_worker.preflight``.

Fails fast, with a message that says what to do, when the machine cannot run the image's workloads: torch cannot
initialise CUDA (no GPU passed to the container, a driver older than the CUDA build), or the compiled extensions the
image was built for do not load or have no kernels for this GPU (flash-attn, mmcv's ``_ext``). Each check is a small
function; the output is one line per check. Exit status 0, or 12 on the first failure. start.sh skips this when
SKIP_GPU_PREFLIGHT=1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import PreflightError

CUDA_SKIP_HINT = "set SKIP_GPU_PREFLIGHT=1 to start without these checks (ComfyUI then needs --cpu in COMFY_ARGS)"


def _gpu_visible() -> str:
    """What the container can see of a GPU, for the 'why' of a CUDA failure."""
    facts = []
    nodes = sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))
    facts.append(f"GPU device nodes: {', '.join(nodes) if nodes else 'none in /dev'}")
    facts.append(f"nvidia-smi: {'present' if shutil.which('nvidia-smi') else 'absent'}")
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        if var in os.environ:
            facts.append(f"{var}={os.environ[var]!r}")
    return "; ".join(facts)


def check_torch(state: dict[str, Any]) -> str:
    try:
        import torch
    except Exception as e:
        raise PreflightError(
            f"torch does not import in {sys.executable}: {type(e).__name__}: {e}",
            fix="the image's Python environment is broken; rebuild the image (nox -s image)",
        ) from None
    state["torch"] = torch
    return f"torch {torch.__version__} (CUDA build {torch.version.cuda})"


def check_cuda(state: dict[str, Any]) -> str:
    torch = state["torch"]
    if torch.version.cuda is None:
        raise PreflightError(
            f"torch {torch.__version__} is a CPU-only build",
            fix="install the image's CUDA build of torch; " + CUDA_SKIP_HINT,
        )
    try:
        torch.cuda.init()
        count = torch.cuda.device_count()
        if count == 0:
            raise RuntimeError("torch sees no CUDA device")
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        # A real kernel launch: catches "no kernel image is available" and broken drivers that init() misses.
        value = (torch.ones(4, device="cuda") * 2).sum().item()
        if value != 8.0:
            raise RuntimeError(f"a test kernel computed {value}, not 8.0")
    except Exception as e:
        raise PreflightError(
            f"CUDA is not usable: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}",
            why=_gpu_visible(),
            fix="run the image with a GPU (RunPod: a GPU pod or endpoint; docker: --gpus all) whose driver supports "
            f"CUDA {torch.version.cuda} (driver >= 550 for CUDA 12.4); if RunPod gave you a broken GPU, terminate the "
            f"pod or report the worker; {CUDA_SKIP_HINT}",
        ) from None
    state["capability"] = (major, minor)
    return f"CUDA {torch.version.cuda}: {count} device(s), {name} (sm_{major}{minor})"


def check_flash_attn(state: dict[str, Any]) -> str:
    torch = state["torch"]
    try:
        import flash_attn
        from flash_attn import flash_attn_func
    except Exception as e:
        raise PreflightError(
            f"flash_attn does not import: {type(e).__name__}: {e}",
            why="its compiled extension does not match this image's torch, CUDA or Python",
            fix="rebuild the flash-attn wheel for this image's torch (nox -s wheels -- flash-attn) and the image",
        ) from None
    try:
        q = torch.randn(1, 8, 2, 64, device="cuda", dtype=torch.float16)
        flash_attn_func(q, q, q)
        torch.cuda.synchronize()
    except Exception as e:
        major, minor = state.get("capability", ("?", "?"))
        raise PreflightError(
            f"flash-attn {flash_attn.__version__} imports but cannot run on this GPU (sm_{major}{minor}): {e}",
            why="the wheel was built without kernels for this GPU architecture",
            fix="rebuild flash-attn with this architecture in cuda-archs (wheels/matrix.toml), or pick a GPU type the "
            "image was built for (sm_80, sm_86, sm_89, sm_90)",
        ) from None
    return f"flash_attn {flash_attn.__version__}: kernel ran"


def check_mmcv(state: dict[str, Any]) -> str:
    torch = state["torch"]
    try:
        import mmcv
        from mmcv import _ext  # noqa: F401 - the compiled ops; mmcv-lite has none
    except Exception as e:
        raise PreflightError(
            f"mmcv's compiled ops (mmcv._ext) do not import: {type(e).__name__}: {e}",
            why="mmcv is missing, is mmcv-lite (built with MMCV_WITH_OPS=0), or was built for another torch/CUDA",
            fix="rebuild the mmcv wheel for this image's torch (nox -s wheels -- mmcv) and the image",
        ) from None
    try:
        from mmcv.ops import nms

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]], device="cuda")
        scores = torch.tensor([0.9, 0.8], device="cuda")
        nms(boxes, scores, 0.5)
        torch.cuda.synchronize()
    except Exception as e:
        raise PreflightError(
            f"mmcv {mmcv.__version__} ops import but do not run on this GPU: {e}",
            why="the wheel was built without kernels for this GPU architecture",
            fix="rebuild mmcv with this architecture in cuda-archs (wheels/matrix.toml)",
        ) from None
    return f"mmcv {mmcv.__version__}: _ext loaded, nms ran on the GPU"


CHECKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "torch": check_torch,
    "cuda": check_cuda,
    "flash_attn": check_flash_attn,
    "mmcv": check_mmcv,
}


def run(names: Sequence[str], emit: Callable[[str], None] = print) -> None:
    state: dict[str, Any] = {}
    for name in names:
        emit(f"ok   {name}: {CHECKS[name](state)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfy_worker.preflight", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[c for c in CHECKS if c not in ("torch", "cuda")],
        help="leave out an extension check (repeatable)",
    )
    args = parser.parse_args(argv)
    names = [n for n in CHECKS if n not in args.skip]
    try:
        run(names)
    except PreflightError as e:
        print(f"FAILED: {e.render()}", flush=True)
        return e.exit_code
    print("GPU preflight passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
