"""The canary's one kernel computes a * x + y on the GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
canary = pytest.importorskip("canary")

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("n", [1, 1000, 1 << 20, (1 << 22) + 3])
def test_saxpy_matches_torch(device, n: int) -> None:  # noqa: ANN001
    gen = torch.Generator(device=device).manual_seed(n)
    x = torch.randn(n, device=device, generator=gen)
    y = torch.randn(n, device=device, generator=gen)
    out = canary.saxpy(2.5, x, y)
    torch.testing.assert_close(out, 2.5 * x + y, rtol=1e-6, atol=1e-6)


def test_saxpy_rejects_cpu_tensors() -> None:
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        canary.saxpy(1.0, torch.ones(3), torch.ones(3))
