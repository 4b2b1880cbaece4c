"""RMSNorm kernels (kernels/rmsnorm.py) against a float64 reference, forward and both gradients.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py) with
NANOCODEC_KERNELS=triton forcing them.
"""
import pytest
import torch

import kernels
from kernels.rmsnorm import rms_norm_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def reference(x, weight, eps):
    x, weight = x.double(), weight.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def check(fn, x, weight, eps, dy):
    """fn's output and (dx, dw) against float64 autograd of the textbook formula."""
    xs, ws = x.detach().requires_grad_(), weight.detach().requires_grad_()
    y = fn(xs, ws, eps)
    assert y.shape == x.shape and y.dtype == x.dtype
    dx, dw = torch.autograd.grad(y, (xs, ws), dy)
    assert dw.dtype == weight.dtype
    xd, wd = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    want = reference(xd, wd, eps)
    want_dx, want_dw = torch.autograd.grad(want, (xd, wd), dy.double())
    tol = TOLERANCE[x.dtype]
    for name, got, ref in (("y", y, want), ("dx", dx, want_dx), ("dw", dw, want_dw)):
        assert torch.isfinite(got).all(), name
        err = (got.double() - ref).abs().max().item()
        # dw sums over all rows: its rounding error grows with the row count.
        scale = max(1.0, ref.abs().max().item())
        assert err <= tol * scale, f"{name}: error {err} > {tol * scale}"


def randn(shape, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(shape, generator=g, device=DEVICE).to(dtype)


@pytest.mark.parametrize("shape", [(1, 1), (17, 100), (3, 5, 257), (2, 64), (2, 16384), (5, 9000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_float64(shape, dtype, poison, monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    x = randn(shape, dtype, seed=sum(shape)) * 3
    weight = randn(shape[-1:], dtype, seed=1) + 1
    check(kernels.rms_norm, x, weight, 1e-6, randn(shape, dtype, seed=2))


def test_triton_strided_rows_and_fp32_weight(poison, monkeypatch):
    """A column slice of a wider tensor (row stride != row length) and an fp32 weight with fp16
    activations, as under autocast."""
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    wide = randn((2, 9, 160), torch.float16, seed=3)
    x = wide[..., :100]
    assert x.stride(-2) == 160
    weight = randn((100,), torch.float32, seed=4)
    check(kernels.rms_norm, x, weight, 1e-5, randn((2, 9, 100), torch.float16, seed=5))


@pytest.mark.parametrize("shape", [(17, 100), (3, 1, 257)])
def test_torch_path_matches_float64(shape, monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "torch")
    x, weight = randn(shape, torch.float32, 6), randn(shape[-1:], torch.float32, 7)
    check(kernels.rms_norm, x, weight, 1e-6, randn(shape, torch.float32, 8))


@pytest.mark.parametrize("fn", [kernels.rms_norm, rms_norm_torch])
def test_wrong_weight_shape_raises(fn, monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    with pytest.raises(ValueError, match="weight shape"):
        fn(torch.zeros(4, 8), torch.ones(7), 1e-6)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", [(4096, 2048), (64, 16384), (8191, 1000)])
def test_bf16_on_gpu(shape):
    x = randn(shape, torch.bfloat16, seed=9)
    weight = randn(shape[-1:], torch.bfloat16, seed=10)
    check(kernels.rms_norm, x, weight, 1e-6, randn(shape, torch.bfloat16, seed=11))


@pytest.mark.gpu
@needs_cuda
def test_rows_past_int32_offsets():
    """2^31 + one row of elements: row offsets overflow int32, so the last rows prove int64."""
    n = 4096
    rows = 2**31 // n + 1
    x = torch.empty((rows, n), device="cuda", dtype=torch.bfloat16).normal_()
    weight = torch.ones(n, device="cuda", dtype=torch.bfloat16)
    y = kernels.rms_norm(x, weight, 1e-6)
    tail = slice(rows - 3, rows)
    assert torch.allclose(y[tail].float(), reference(x[tail], weight, 1e-6).float(), atol=3e-2)
