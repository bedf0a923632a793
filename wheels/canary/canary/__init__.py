"""A tiny torch CUDA extension: ``saxpy(a, x, y) = a * x + y`` on the GPU.

``import torch`` must come first: extensions built by torch's cpp_extension carry no RPATH to torch's libraries.
"""

import torch

from . import _C

__all__ = ["saxpy"]


def saxpy(a: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return ``a * x + y`` computed by this package's own CUDA kernel (float32, same-shape CUDA tensors)."""
    return _C.saxpy(float(a), x, y)
