"""Content-addressed cache keys: everything that changes the product, and nothing that does not."""

from __future__ import annotations

from typing import Any

from .options import Target
from .recipes import RECIPES
from .util import canonical_json, sha256_text

# Bump when the pipeline changes how every wheel is built (flags it passes, how it relabels or repairs).
BUILD_PROTOCOL = 1


def key_inputs(
    target: Target,
    *,
    source_hash: str,
    toolchain: dict[str, str],
    torch: dict[str, Any],
    python: str,
    backend: str = "local",
) -> dict[str, Any]:
    recipe = RECIPES[target.recipe]
    return {
        "protocol": BUILD_PROTOCOL,
        "package": target.package,
        "version": target.version,
        "source": source_hash,
        "recipe": {"name": recipe.name, "fingerprint": recipe.fingerprint(), "flavour": target.flavour},
        "flags": recipe.flags(target),
        "torch": torch,
        "python": python,
        "cuda_archs": list(target.cuda_archs),
        "toolchain": toolchain,
        "backend": backend,
    }


def cache_key(inputs: dict[str, Any]) -> str:
    return sha256_text(canonical_json(inputs))
