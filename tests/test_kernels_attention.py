"""Flash attention kernels (kernels/attention.py) against a float64 reference, forward and backward.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py) with
NANOCODEC_KERNELS=triton forcing them; shapes stay small because the interpreter pays per program.
"""
import importlib
import math

import pytest
import torch

import kernels
from kernels.attention import attention_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def triton_forced(monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")


def naive_attention(q, k, v, causal, scale, dtype):
    """Textbook attention computed entirely in `dtype` (float64: the truth; fp16/bf16: the
    low-precision baseline of FlashAttention's test rule)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    tq, tk = q.shape[2], k.shape[2]
    if causal:
        visible = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        s = s.masked_fill(~visible, float("-inf"))
    return s.softmax(-1) @ v


def make_inputs(b, hq, hkv, tq, tk, d, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    shapes = ((b, hq, tq, d), (b, hkv, tk, d), (b, hkv, tk, d), (b, hq, tq, d))
    q, k, v, do = (torch.randn(s, generator=g, device=DEVICE, dtype=torch.float32).to(dtype)
                   for s in shapes)
    return q, k, v, do


def run(fn, q, k, v, do, **kw):
    """Output and (dq, dk, dv) of fn with upstream gradient do."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kw)
    return out, torch.autograd.grad(out, leaves, do.to(out.dtype))


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_close_to_truth(q, k, v, do, causal, scale, low_dtype):
    """fp32 kernels must match float64 tightly; low-precision kernels follow FlashAttention's rule:
    error vs float64 at most 2x that of the textbook implementation in the same dtype."""
    out, grads = run(kernels.attention, q, k, v, do, causal=causal, scale=scale)
    eff_scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    truth, truth_grads = run(naive_attention, q, k, v, do, causal=causal, scale=eff_scale,
                             dtype=torch.float64)
    assert out.dtype == q.dtype and out.shape == q.shape
    if low_dtype is None:
        for name, got, want in zip(("o", "dq", "dk", "dv"), (out, *grads), (truth, *truth_grads)):
            bound = 2e-5 * max(1.0, want.abs().max().item())
            assert max_err(got, want) <= bound, f"{name}: {max_err(got, want)} > {bound}"
        return
    base, base_grads = run(naive_attention, q, k, v, do, causal=causal, scale=eff_scale,
                           dtype=low_dtype)
    for name, got, low, want in zip(("o", "dq", "dk", "dv"), (out, *grads), (base, *base_grads),
                                    (truth, *truth_grads)):
        assert torch.isfinite(got).all(), name
        bound = 2 * max_err(low, want) + 1e-5
        assert max_err(got, want) <= bound, f"{name}: {max_err(got, want)} > 2x baseline {bound}"


CASES = [  # batch, q heads, kv heads, q_len, k_len, head_dim, causal, dtype
    (2, 2, 1, 17, 17, 64, True, torch.float32),
    (1, 2, 2, 100, 100, 64, True, torch.float16),
    (1, 1, 1, 257, 257, 16, True, torch.float32),
    (1, 2, 1, 1, 1, 64, True, torch.float32),
    (1, 2, 1, 17, 100, 128, True, torch.float32),
    (1, 4, 2, 1, 257, 32, True, torch.float16),
    (2, 2, 2, 100, 100, 128, False, torch.float32),
    (1, 2, 1, 33, 257, 64, False, torch.float16),
    (1, 2, 1, 100, 257, 128, True, torch.float16),
    (2, 6, 2, 17, 40, 32, True, torch.float32),
]


@pytest.mark.parametrize("b,hq,hkv,tq,tk,d,causal,dtype", CASES)
def test_triton_matches_float64(b, hq, hkv, tq, tk, d, causal, dtype, poison, triton_forced):
    q, k, v, do = make_inputs(b, hq, hkv, tq, tk, d, dtype, seed=tq * 1000 + tk + d)
    low = None if dtype == torch.float32 else dtype
    assert_close_to_truth(q, k, v, do, causal, None, low)


def test_triton_strided_inputs_and_custom_scale(poison, triton_forced):
    """The model hands over (B, T, H, D) projections transposed to (B, H, T, D): not contiguous."""
    g = torch.Generator(device=DEVICE).manual_seed(7)
    q = torch.randn(2, 37, 4, 32, generator=g, device=DEVICE).transpose(1, 2)
    kv = torch.randn(2, 37, 2, 2, 32, generator=g, device=DEVICE)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    do = torch.randn(2, 37, 4, 32, generator=g, device=DEVICE).transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    assert_close_to_truth(q, k, v, do, True, 0.3, None)


@pytest.mark.parametrize("blocks", [
    {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16)},
    {"fwd": (64, 32), "dkdv": (32, 64), "dq": (64, 32)},
    {"fwd": (16, 64), "dkdv": (64, 16), "dq": (16, 64)},  # more queries than keys per dK/dV step
])
def test_triton_other_block_shapes(blocks, poison, triton_forced, monkeypatch):
    """The diagonal and tail logic must not depend on the block shape the autotuner picks."""
    monkeypatch.setattr(importlib.import_module("kernels.attention"), "INTERPRETER_BLOCKS", blocks)
    q, k, v, do = make_inputs(1, 2, 1, 70, 135, 32, torch.float32, seed=11)
    assert_close_to_truth(q, k, v, do, True, None, None)


@pytest.mark.parametrize("b,hq,hkv,tq,tk,d,causal", [
    (2, 4, 2, 17, 17, 64, True), (1, 2, 1, 5, 100, 24, True), (1, 3, 3, 33, 40, 16, False),
])
def test_torch_path_matches_float64(b, hq, hkv, tq, tk, d, causal, monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "torch")
    q, k, v, do = make_inputs(b, hq, hkv, tq, tk, d, torch.float32, seed=tq + d)
    assert_close_to_truth(q, k, v, do, causal, None, None)


def test_decode_step_sees_the_whole_cache(triton_forced):
    """Bottom-right alignment: the last query of a causal q_len < k_len call sees every key, so it
    equals non-causal attention for that row."""
    q, k, v, _ = make_inputs(1, 2, 1, 3, 50, 32, torch.float32, seed=3)
    causal = kernels.attention(q, k, v, causal=True)
    full = kernels.attention(q[:, :, -1:], k, v, causal=False)
    assert max_err(causal[:, :, -1:], full) < 1e-5


def test_backend_dispatch(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("NANOCODEC_KERNELS", raising=False)
    assert kernels.backend(cpu) == "torch"
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    assert kernels.backend(cpu) == "triton"
    monkeypatch.setenv("NANOCODEC_KERNELS", "cuda")
    with pytest.raises(ValueError, match="NANOCODEC_KERNELS"):
        kernels.backend(cpu)


@pytest.mark.parametrize("fn", [kernels.attention, attention_torch])
@pytest.mark.parametrize("shapes,message", [
    (((1, 3, 4, 16), (1, 2, 4, 16), (1, 2, 4, 16)), "must divide"),
    (((1, 2, 5, 16), (1, 2, 4, 16), (1, 2, 4, 16)), "must not exceed"),
    (((1, 2, 4, 16), (1, 2, 4, 32), (1, 2, 4, 32)), "head_dim"),
    (((1, 2, 4, 16), (1, 2, 4, 16), (1, 2, 5, 16)), "differ in shape"),
    (((2, 4, 16),) * 3, "must be"),
])
def test_bad_shapes_raise(fn, shapes, message, triton_forced):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        fn(q, k, v)


def test_triton_rejects_unsupported_head_dim(triton_forced):
    q = torch.zeros(1, 1, 4, 24)
    with pytest.raises(ValueError, match="head_dim"):
        kernels.attention(q, q, q)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("tq,tk,hkv", [(1000, 1000, 2), (300, 1100, 8)])
def test_bf16_flash_attention_rule(tq, tk, hkv, d):
    q, k, v, do = make_inputs(2, 8, hkv, tq, tk, d, torch.bfloat16, seed=d + tq)
    out, grads = run(kernels.attention, q, k, v, do, causal=True)
    ref, ref_grads = run(naive_attention, q, k, v, do, causal=True, scale=1 / math.sqrt(d),
                         dtype=torch.float32)
    low, low_grads = run(naive_attention, q, k, v, do, causal=True, scale=1 / math.sqrt(d),
                         dtype=torch.bfloat16)
    for name, got, base, want in zip(("o", "dq", "dk", "dv"), (out, *grads), (low, *low_grads),
                                     (ref, *ref_grads)):
        assert max_err(got, want) <= 2 * max_err(base, want) + 1e-5, name


@pytest.mark.gpu
@needs_cuda
def test_bf16_16k_sequence_against_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, do = make_inputs(1, 4, 2, 16384, 16384, 128, torch.bfloat16, seed=16)
    out, grads = run(kernels.attention, q, k, v, do, causal=True)
    ref, ref_grads = run(attention_torch, *(t.float() for t in (q, k, v)), do.float(), causal=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        low, low_grads = run(attention_torch, q, k, v, do, causal=True)
    for name, got, base, want in zip(("o", "dq", "dk", "dv"), (out, *grads), (low, *low_grads),
                                     (ref, *ref_grads)):
        assert torch.isfinite(got).all(), name
        assert max_err(got, want) <= 2 * max_err(base, want) + 1e-5, name


@pytest.mark.gpu
@needs_cuda
def test_backward_is_deterministic():
    q, k, v, do = make_inputs(2, 8, 2, 2048, 2048, 128, torch.bfloat16, seed=5)
    first = run(kernels.attention, q, k, v, do)[1]
    for _ in range(4):
        again = run(kernels.attention, q, k, v, do)[1]
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_bench_without_cuda_says_so(capsys):
    from kernels.bench import main

    main([])
    assert "needs a CUDA GPU" in capsys.readouterr().out
