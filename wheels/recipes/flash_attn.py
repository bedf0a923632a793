"""flash-attn 2.7.4.post1, built from its PyPI sdist (which carries csrc/cutlass).

It must never download upstream's prebuilt wheel (FLASH_ATTENTION_FORCE_BUILD), picks its own -gencode flags from
FLASH_ATTN_CUDA_ARCHS (it ignores TORCH_CUDA_ARCH_LIST) and uses NVCC_THREADS for nvcc's --threads.

Flavours:
  full     upstream's kernels: 84 kernel files per arch (28 forward, 28 backward, 28 split-KV) plus flash_api.cpp;
           about 11 h for sm_80 + sm_90 on 2 cores, still > 30 min on 32 cores.
  hdim128  only the head-dim-128 kernels (forward, backward and split-KV; fp16 and bf16; causal and not: 12 files).
           Wan 2.1 / SteadyDancer attention uses head dim 128. The head-dim dispatch is restricted at compile time, so
           no other kernel is referenced (no undefined symbol can arise), and any head dim upstream would route to
           another kernel raises a RuntimeError naming the flavour instead.

Measured per-file compile costs (one arch; 2 cores, and 16 cores on an H200 host) are in bench/results.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SourceError
from .base import Recipe

HDIM128_DEFINE = "FLASHATTENTION_HDIM128_ONLY"
# Upstream routes head dims 97..128 to its kHeadDim=128 kernels (csrc/flash_attn/src/static_switch.h).
HDIM128_RANGE = (97, 128)

_KERNEL_RE = re.compile(r'^\s*"csrc/flash_attn/src/flash_(fwd_split|fwd|bwd)_hdim(\d+)_\w+_sm80\.cu",\s*$')
# Longest first: with fewer jobs than files, the slow backward kernels must not be the tail (BUILD-ENV.md timings).
_ORDER = {"bwd": 0, "fwd": 1, "fwd_split": 2}

_SWITCH_HDIM128 = """#ifdef FLASHATTENTION_HDIM128_ONLY
// Patched by this repository's flash-attn recipe (flavour hdim128): only the kHeadDim=128 kernels are compiled.
#define HEADDIM_SWITCH(HEADDIM, ...)                                                                   \\
  [&] {                                                                                                \\
    TORCH_CHECK(HEADDIM > 96 && HEADDIM <= 128,                                                         \\
                "flash-attn was built with the 'hdim128' flavour, which holds only the head-dim-128 "   \\
                "kernels (head dims 97..128); got head dim ", HEADDIM,                                  \\
                ". Install the 'full' flavour of flash-attn for other head dims.");                      \\
    constexpr static int kHeadDim = 128;                                                                \\
    return __VA_ARGS__();                                                                               \\
  }()
#else
"""

_PY_FLAVOUR = """

# Added by this repository's flash-attn recipe: which kernels this build holds.
FLAVOUR = "hdim128"
SUPPORTED_HEAD_DIMS = range(97, 129)
"""


def _fa_archs(target) -> str:  # noqa: ANN001
    return ";".join(target.sm_archs)


def _edit(path: Path, old: str, new: str) -> None:
    """Replace exactly one occurrence, or fail loudly: a patch must never half-apply to a changed upstream."""
    text = path.read_text()
    count = text.count(old)
    if count != 1:
        raise SourceError(
            f"The hdim128 patch expected one occurrence of {old.strip()[:60]!r} in {path}, found {count}",
            why="the flash-attn source is not the version this recipe was written for",
            fix="update wheels/recipes/flash_attn.py for this flash-attn version",
        )
    path.write_text(text.replace(old, new))


def kernel_sources(setup_py: Path) -> list[tuple[str, int]]:
    """(kind, head dim) of each kernel source setup.py compiles."""
    out = []
    for line in setup_py.read_text().splitlines():
        match = _KERNEL_RE.match(line)
        if match:
            out.append((match.group(1), int(match.group(2))))
    return out


def patch_hdim128(src: Path) -> None:
    setup_py = src / "setup.py"
    lines = setup_py.read_text().splitlines(keepends=True)
    kept: list[tuple[int, str]] = []
    first = last = None
    for i, line in enumerate(lines):
        match = _KERNEL_RE.match(line)
        if match:
            first = i if first is None else first
            last = i
            if int(match.group(2)) == 128:
                kept.append((_ORDER[match.group(1)], line))
    if first is None or len(kept) != 12:
        raise SourceError(
            f"The hdim128 patch expected 12 head-dim-128 kernel files in {setup_py}, found {len(kept)}",
            fix="update wheels/recipes/flash_attn.py for this flash-attn version",
        )
    block = [line for _, line in sorted(kept, key=lambda item: item[0])]
    non_kernel = [ln for ln in lines[first : last + 1] if not _KERNEL_RE.match(ln)]
    setup_py.write_text("".join(lines[:first] + block + non_kernel + lines[last + 1 :]))
    # The define reaches both compilers: host (flash_api.cpp) and nvcc.
    _edit(setup_py, '"cxx": ["-O3", "-std=c++17"],', f'"cxx": ["-O3", "-std=c++17", "-D{HDIM128_DEFINE}"],')
    _edit(setup_py, '                        "--use_fast_math",\n', f'                        "--use_fast_math",\n                        "-D{HDIM128_DEFINE}",\n')
    switch = src / "csrc/flash_attn/src/static_switch.h"
    _edit(switch, "#define HEADDIM_SWITCH(HEADDIM, ...)   \\\n", _SWITCH_HDIM128 + "#define HEADDIM_SWITCH(HEADDIM, ...)   \\\n")
    text = switch.read_text()
    end = text.index("  }()\n", text.index("#else\n#define HEADDIM_SWITCH")) + len("  }()\n")
    switch.write_text(text[:end] + "#endif  // FLASHATTENTION_HDIM128_ONLY\n" + text[end:])
    init = src / "flash_attn/__init__.py"
    init.write_text(init.read_text() + _PY_FLAVOUR)


class FlashAttnRecipe(Recipe):
    def prepare(self, src: Path, target) -> None:  # noqa: ANN001
        if not (src / "csrc/cutlass/include").is_dir():
            raise SourceError(f"{src} has no csrc/cutlass", fix="build from the PyPI sdist, which carries it")
        if target.flavour == "hdim128":
            patch_hdim128(src)

    def build_env(self, target, plan, label: str) -> dict[str, str]:  # noqa: ANN001
        return {
            "FLASH_ATTENTION_FORCE_BUILD": "TRUE",  # never download upstream's wheel
            "FLASH_ATTENTION_SKIP_CUDA_BUILD": "FALSE",
            "FLASH_ATTN_CUDA_ARCHS": _fa_archs(target),
            "FLASH_ATTN_LOCAL_VERSION": label,
            "NVCC_THREADS": str(plan.nvcc_threads),
        }

    def flags(self, target) -> dict[str, str]:  # noqa: ANN001
        return {"FLASH_ATTN_CUDA_ARCHS": _fa_archs(target), "flavour": target.flavour or "full"}

    def compile_units(self, src: Path, target) -> int | None:  # noqa: ANN001
        setup_py = src / "setup.py"
        return len(kernel_sources(setup_py)) + 1 if setup_py.exists() else None  # + flash_api.cpp


FLASH_ATTN = FlashAttnRecipe(
    name="flash-attn",
    extension_modules=("flash_attn_2_cuda",),
    # Measured on sm_90: forward kernels 3.97 GB, backward 5.89 GB, hdim256 backward 6.41 GB (BUILD-ENV.md).
    mem_per_job_gib=6.0,
    extra_requirements=("psutil", "einops"),
    flavours=("full", "hdim128"),
)
