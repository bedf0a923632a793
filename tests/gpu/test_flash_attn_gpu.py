"""flash-attn on a real GPU: numerics against a float32 reference, the flavour's head-dim contract, first-call
latency (SASS present: no PTX JIT) and forward throughput against torch's SDPA flash backend.

Tolerance rule, as upstream's tests/test_flash_attn.py: our error against the float32 reference must be within a small
multiple of the error of the same computation done with plain torch ops in the low precision (fp16/bf16).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
flash_attn = pytest.importorskip("flash_attn")
from flash_attn import flash_attn_func, flash_attn_varlen_func  # noqa: E402

pytestmark = pytest.mark.gpu

FLAVOUR = getattr(flash_attn, "FLAVOUR", "full")
# Head dims each flavour holds kernels for; 112 rounds to the 128 kernels (upstream dispatches 97..128 there).
HEAD_DIMS = {"full": [32, 64, 96, 128, 160, 192, 256], "hdim128": [128, 112]}[FLAVOUR]
OUTSIDE = {"full": [], "hdim128": [64, 96, 160, 256]}[FLAVOUR]
DTYPES = [torch.float16, torch.bfloat16]
FWD_FACTOR, BWD_FACTOR = 2.0, 3.0


def attention_ref(q, k, v, causal: bool, upcast: bool):  # noqa: ANN001, ANN201
    """(b, s_q, h, d) attention; GQA by repeating k/v heads; causal aligned bottom-right as flash-attn does."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    heads, heads_k = q.shape[2], k.shape[2]
    if heads != heads_k:
        k = k.repeat_interleave(heads // heads_k, dim=2)
        v = v.repeat_interleave(heads // heads_k, dim=2)
    s_q, s_k = q.shape[1], k.shape[1]
    scores = torch.einsum("bthd,bshd->bhts", q / math.sqrt(q.shape[-1]), k)
    if causal:
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).triu(s_k - s_q + 1)
        scores = scores.masked_fill(mask, float("-inf"))
    attn = torch.softmax(scores, dim=-1)
    return torch.einsum("bhts,bshd->bthd", attn, v).to(dtype)


def _inputs(device, b: int, s_q: int, s_k: int, h: int, h_k: int, d: int, dtype, seed: int):  # noqa: ANN001, ANN202
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, s_q, h, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(b, s_k, h_k, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(b, s_k, h_k, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    return q, k, v


def _maxerr(a, b) -> float:  # noqa: ANN001
    return (a.float() - b.float()).abs().max().item()


def _check(name: str, ours, ref, pt, factor: float, measure) -> None:  # noqa: ANN001
    ours_err, pt_err = _maxerr(ours, ref), _maxerr(pt, ref)
    assert torch.isfinite(ours.float()).all(), f"{name}: non-finite values"
    measure(f"{name} max abs error", ours_err, "abs", torch_lowp_error=pt_err)
    assert ours_err <= factor * pt_err + 1e-5, f"{name}: error {ours_err:.3e} > {factor} x torch's {pt_err:.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize(("s_q", "s_k", "h", "h_k"), [(256, 256, 8, 8), (113, 203, 8, 8), (512, 512, 8, 2)],
                         ids=["square", "ragged", "gqa"])
def test_forward_backward_against_fp32_reference(device, measure, dtype, causal, d, s_q, s_k, h, h_k) -> None:  # noqa: ANN001
    q, k, v = _inputs(device, 2, s_q, s_k, h, h_k, d, dtype, seed=d * 1000 + s_q)
    out = flash_attn_func(q, k, v, causal=causal)
    ref = attention_ref(q, k, v, causal, upcast=True)
    pt = attention_ref(q, k, v, causal, upcast=False)
    _check(f"fwd d={d} {dtype} causal={causal} {s_q}x{s_k} h={h}/{h_k}", out, ref, pt, FWD_FACTOR, measure)

    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    grads_ref = torch.autograd.grad(ref, (q, k, v), dout)
    grads_pt = torch.autograd.grad(pt, (q, k, v), dout)
    for name, g, g_ref, g_pt in zip(("dq", "dk", "dv"), grads, grads_ref, grads_pt):
        _check(f"bwd {name} d={d} {dtype} causal={causal}", g, g_ref, g_pt, BWD_FACTOR, measure)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_against_per_sequence_reference(device, measure, dtype, causal) -> None:  # noqa: ANN001
    d, h, h_k = HEAD_DIMS[0], 8, 4
    lens = [100, 257, 31]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=device, dtype=torch.int32)
    total = sum(lens)
    gen = torch.Generator(device=device).manual_seed(7)
    q = torch.randn(total, h, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(total, h_k, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(total, h_k, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    out = flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for i, n in enumerate(lens):
        sl = slice(cu[i].item(), cu[i + 1].item())
        qs, ks, vs = (t[sl].unsqueeze(0) for t in (q, k, v))
        ref = attention_ref(qs, ks, vs, causal, upcast=True)
        pt = attention_ref(qs, ks, vs, causal, upcast=False)
        _check(f"varlen fwd seq{i} len={n} {dtype} causal={causal}", out[sl].unsqueeze(0), ref, pt, FWD_FACTOR, measure)
        g_ref = torch.autograd.grad(ref, (q, k, v), dout[sl].unsqueeze(0))
        g_pt = torch.autograd.grad(pt, (q, k, v), dout[sl].unsqueeze(0))
        for name, g, gr, gp in zip(("dq", "dk", "dv"), grads, g_ref, g_pt):
            _check(f"varlen bwd {name} seq{i} {dtype}", g[sl], gr[sl], gp[sl], BWD_FACTOR, measure)


@pytest.mark.skipif(not OUTSIDE, reason="the full flavour holds every head dim")
@pytest.mark.parametrize("d", OUTSIDE)
def test_head_dims_outside_the_flavour_raise_a_clear_error(device, d: int) -> None:  # noqa: ANN001
    q, k, v = _inputs(device, 1, 64, 64, 4, 4, d, torch.float16, seed=d)
    with pytest.raises(RuntimeError, match=rf"'{FLAVOUR}' flavour.*got head dim {d}"):
        flash_attn_func(q, k, v)
    with pytest.raises(RuntimeError, match=rf"'{FLAVOUR}' flavour"):
        flash_attn_varlen_func(q[0], k[0], v[0], *(torch.tensor([0, 64], device=device, dtype=torch.int32),) * 2, 64, 64)
    # The process is still healthy: a supported head dim works right after.
    q, k, v = _inputs(device, 1, 64, 64, 4, 4, HEAD_DIMS[0], torch.float16, seed=1)
    assert torch.isfinite(flash_attn_func(q, k, v)).all()


def _sass_archs(path: str) -> set[str]:
    cuobjdump = shutil.which("cuobjdump") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")
    out = subprocess.run([cuobjdump, "--list-elf", path], capture_output=True, text=True, check=True).stdout
    import re

    return set(re.findall(r"\.(sm_\d+a?)\.cubin", out))


def test_sass_for_this_gpu_is_embedded(device, measure) -> None:  # noqa: ANN001
    import flash_attn_2_cuda

    major, minor = torch.cuda.get_device_capability(device)
    archs = _sass_archs(flash_attn_2_cuda.__file__)
    measure("embedded SASS archs", len(archs), "count", archs=sorted(archs))
    assert f"sm_{major}{minor}" in archs, f"no SASS for sm_{major}{minor} (found {sorted(archs)}): first use would JIT PTX"


FIRST_CALL = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from flash_attn import flash_attn_func
    d = int(sys.argv[1])
    q = torch.randn(1, 128, 8, d, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    flash_attn_func(q, q, q)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    flash_attn_func(q, q, q)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(json.dumps({"first_s": t1 - t0, "second_s": t2 - t1}))
    """
)


def test_first_call_latency(device, measure) -> None:  # noqa: ANN001
    """Measured in a fresh process (module load + first launch). Recorded, not asserted: timings are benchmarks."""
    env = {**os.environ, "CUDA_CACHE_DISABLE": "1"}  # a warm JIT cache would hide a PTX-only build
    out = subprocess.run([sys.executable, "-c", FIRST_CALL, str(HEAD_DIMS[0])], capture_output=True, text=True,
                         env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    measure("first call latency", result["first_s"], "s", second_call_s=result["second_s"])


THROUGHPUT_SHAPES = [(2, 4096, 40, 128), (1, 16384, 40, 128), (1, 32760, 40, 128)]  # Wan 2.1 14B: 40 heads x 128


def _time_ms(fn, iters: int = 20, warmup: int = 5) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


@pytest.mark.skipif(128 not in HEAD_DIMS, reason="throughput is measured at head dim 128")
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", THROUGHPUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_throughput_against_sdpa_flash(device, measure, dtype, shape) -> None:  # noqa: ANN001
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, s, h, d = shape
    gen = torch.Generator(device=device).manual_seed(s)
    q, k, v = (torch.randn(b, s, h, d, device=device, dtype=dtype, generator=gen) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's (b, h, s, d) layout, same memory
    flops = 4 * b * h * s * s * d
    with torch.no_grad():
        ours_ms = _time_ms(lambda: flash_attn_func(q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa_ms = _time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
        torch.testing.assert_close(
            flash_attn_func(q, k, v).transpose(1, 2),
            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt),
            rtol=2e-2, atol=2e-2,
        )
    ours_tflops, sdpa_tflops = flops / ours_ms / 1e9, flops / sdpa_ms / 1e9
    measure("forward TFLOP/s", ours_tflops, "TFLOP/s", shape=list(shape), dtype=str(dtype),
            sdpa_flash_tflops=sdpa_tflops, ratio=ours_tflops / sdpa_tflops, ours_ms=ours_ms, sdpa_ms=sdpa_ms)
