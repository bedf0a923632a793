"""mmcv 2.1.0 with its CUDA ops (``mmcv._ext``), built for the target's torch.

Nobody publishes mmcv for torch 2.5: OpenMMLab's index stops at torch 2.1 for mmcv 2.1.0 and `mim install` falls back
to a long source build. Its setup.py imports torch and pkg_resources (setuptools<81), so it builds without isolation
in the prepared environment. ``MMCV_WITH_OPS=0`` would produce a package named ``mmcv-lite``: never set it here.
"""

from __future__ import annotations

from pathlib import Path

from .base import Recipe


class MmcvRecipe(Recipe):
    def build_env(self, target, plan, label: str) -> dict[str, str]:  # noqa: ANN001
        # FORCE_CUDA: there is no GPU at build time; MMCV_WITH_OPS: build mmcv (with _ext), not mmcv-lite.
        return {"MMCV_WITH_OPS": "1", "FORCE_CUDA": "1"}

    def flags(self, target) -> dict[str, str]:  # noqa: ANN001
        return {"MMCV_WITH_OPS": "1", "FORCE_CUDA": "1"}

    def compile_units(self, src: Path, target) -> int | None:  # noqa: ANN001
        csrc = src / "mmcv" / "ops" / "csrc" / "pytorch"
        if not csrc.is_dir():
            return None
        files = [p for p in csrc.rglob("*") if p.suffix in (".cpp", ".cu")]
        # Only the CPU and CUDA backends are compiled on Linux with CUDA (not MLU, MPS, NPU).
        return len([p for p in files if p.parent.name in ("pytorch", "cpu", "cuda")])


MMCV = MmcvRecipe(
    name="mmcv",
    extension_modules=("mmcv._ext",),
    # Measured: one .cu unit 1.18 GB, the whole build 2.5 GB per compiler process at MAX_JOBS=2 (BUILD-ENV.md).
    mem_per_job_gib=2.5,
)
