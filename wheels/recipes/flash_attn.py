"""flash-attn 2.7.4.post1, built from its PyPI sdist (which carries csrc/cutlass).

It must never download upstream's prebuilt wheel (FLASH_ATTENTION_FORCE_BUILD), picks its own -gencode flags from
FLASH_ATTN_CUDA_ARCHS (it ignores TORCH_CUDA_ARCH_LIST) and uses NVCC_THREADS for nvcc's --threads.
"""

from __future__ import annotations

from pathlib import Path

from .base import Recipe


def _fa_archs(target) -> str:  # noqa: ANN001
    return ";".join(target.sm_archs)


class FlashAttnRecipe(Recipe):
    def build_env(self, target, plan) -> dict[str, str]:  # noqa: ANN001
        return {
            "FLASH_ATTENTION_FORCE_BUILD": "TRUE",
            "FLASH_ATTENTION_SKIP_CUDA_BUILD": "FALSE",
            "FLASH_ATTN_CUDA_ARCHS": _fa_archs(target),
            "NVCC_THREADS": str(plan.nvcc_threads),
        }

    def flags(self, target) -> dict[str, str]:  # noqa: ANN001
        return {"FLASH_ATTN_CUDA_ARCHS": _fa_archs(target)}

    def compile_units(self, src: Path, target) -> int | None:  # noqa: ANN001
        kernels = src / "csrc" / "flash_attn" / "src"
        if not kernels.is_dir():
            return None
        return len(list(kernels.glob("flash_*_sm80.cu"))) + 1  # + flash_api.cpp


FLASH_ATTN = FlashAttnRecipe(
    name="flash-attn",
    extension_modules=("flash_attn_2_cuda",),
    # Measured on sm_90: forward kernels 3.97 GB, backward 5.89 GB, hdim256 backward 6.41 GB (BUILD-ENV.md).
    mem_per_job_gib=6.0,
    extra_requirements=("psutil", "einops"),
    flavours=("full", "hdim128"),
)
