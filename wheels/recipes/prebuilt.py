"""Upstream wheels that are not built here, only proven: xformers 0.0.29.post1 already exists for torch 2.5.1.

The pipeline fetches the pinned wheel (the target's source is `wheel = URL` with its sha256), runs the ABI gate on it
against the target's torch exactly as for a wheel it built, and records it with its upstream name and version (no
local label: the file is upstream's, byte for byte). No toolchain is involved, so none is required.
"""

from __future__ import annotations

from .base import Recipe

# extension_modules=(): the gate loads what the wheel holds: each extension module (a file defining PyInit_*) by import,
# each torch operator library (xformers/_C.so: TORCH_LIBRARY, no PyInit_*) with torch.ops.load_library.
PREBUILT = Recipe(name="prebuilt", extension_modules=(), mem_per_job_gib=0.0, prebuilt=True)
