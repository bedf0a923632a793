"""The canary: a tiny torch CUDA extension kept in this repository (wheels/canary).

One kernel (`saxpy`) and one binding. Its .cu includes only the CUDA runtime, so it compiles in seconds per arch;
the binding includes torch's headers, which is most of its build time. It travels the same path as flash-attn and
mmcv (environment, toolchain, compiler cache, label, repair, gate, record), so it proves a toolchain in minutes.
"""

from __future__ import annotations

from pathlib import Path

from .base import Recipe


class CanaryRecipe(Recipe):
    def compile_units(self, src: Path, target) -> int | None:  # noqa: ANN001
        return len(list((src / "csrc").glob("*.c*")))


CANARY = CanaryRecipe(
    name="canary",
    extension_modules=("canary._C",),
    mem_per_job_gib=1.5,
)
