"""The recipe registry: one module per package, behind the interface in base.py."""

from __future__ import annotations

from .base import Recipe
from .canary import CANARY
from .flash_attn import FLASH_ATTN
from .mmcv import MMCV
from .prebuilt import PREBUILT

RECIPES: dict[str, Recipe] = {r.name: r for r in (CANARY, MMCV, FLASH_ATTN, PREBUILT)}

__all__ = ["RECIPES", "Recipe"]
