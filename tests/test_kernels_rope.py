"""RoPE kernel (kernels/rope.py) against a float64 complex-number reference, forward and backward.

On CPU the Triton kernel runs under TRITON_INTERPRET=1 (tests/conftest.py) with
NANOCODEC_KERNELS=triton forcing it.
"""
import pytest
import torch

import kernels
from kernels.rope import apply_rope_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def angles(max_len, d, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq).to(DEVICE)


def hf_tables(max_len, d):
    """cos, sin exactly as HuggingFace Llama builds them: the angle table concatenated with itself."""
    emb = torch.cat((angles(max_len, d),) * 2, dim=-1)
    return emb.cos().float(), emb.sin().float()


def reference(x, theta):
    """Each pair (x_i, x_{i+D/2}) is the complex number x_i + i x_{i+D/2}, turned by e^{i theta}."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(
        torch.ones_like(theta), theta)
    return torch.cat((z.real, z.imag), dim=-1)


def randn(shape, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(shape, generator=g, device=DEVICE).to(dtype)


def check(fn, q, k, max_len, positions):
    """fn's rotated q, k and their gradients against float64 autograd of the complex reference."""
    b, _, t, d = q.shape
    cos, sin = hf_tables(max_len, d)
    dq_out, dk_out = randn(q.shape, q.dtype, 21), randn(k.shape, k.dtype, 22)
    leaves = [q.detach().requires_grad_(), k.detach().requires_grad_()]
    outs = fn(*leaves, cos, sin, positions)
    grads = torch.autograd.grad(outs, leaves, (dq_out, dk_out))
    theta = angles(max_len, d)[torch.arange(t, device=DEVICE) if positions is None else positions]
    leaves64 = [x.detach().double().requires_grad_() for x in (q, k)]
    want = [reference(x, theta) for x in leaves64]
    want_grads = torch.autograd.grad(want, leaves64, (dq_out.double(), dk_out.double()))
    tol = TOLERANCE[q.dtype]
    for name, got, ref in zip(("q", "k", "dq", "dk"), (*outs, *grads), (*want, *want_grads)):
        assert got.shape == ref.shape and got.dtype == q.dtype, name
        err = (got.double() - ref).abs().max().item()
        assert err <= tol * max(1.0, ref.abs().max().item()), f"{name}: error {err}"


CASES = [  # batch, q heads, kv heads, seq, head_dim, table length, random positions
    (2, 4, 2, 17, 64, 17, False),
    (1, 3, 1, 100, 128, 300, True),
    (1, 1, 1, 1, 64, 8, True),
    (1, 2, 2, 257, 128, 257, False),
    (2, 2, 1, 9, 24, 50, True),
]


@pytest.mark.parametrize("b,hq,hkv,t,d,max_len,use_positions", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_float64(b, hq, hkv, t, d, max_len, use_positions, dtype, poison,
                                monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    q, k = randn((b, hq, t, d), dtype, seed=t), randn((b, hkv, t, d), dtype, seed=t + 1)
    g = torch.Generator().manual_seed(t)
    positions = torch.randperm(max_len, generator=g)[:t].to(DEVICE) if use_positions else None
    check(kernels.apply_rope, q, k, max_len, positions)


def test_triton_strided_inputs(poison, monkeypatch):
    """q and k arrive as transposed views of (B, T, H, D) projections."""
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    q = randn((2, 33, 4, 64), torch.float32, 1).transpose(1, 2)
    k = randn((2, 33, 2, 64), torch.float32, 2).transpose(1, 2)
    check(kernels.apply_rope, q, k, 40, None)


def test_decode_positions_match_prefix_rows(monkeypatch):
    """Rotating one token at absolute position p equals row p of rotating the whole sequence."""
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    q, k = randn((1, 2, 20, 32), torch.float32, 3), randn((1, 1, 20, 32), torch.float32, 4)
    cos, sin = hf_tables(20, 32)
    full_q, full_k = kernels.apply_rope(q, k, cos, sin)
    step_q, step_k = kernels.apply_rope(q[:, :, 13:14], k[:, :, 13:14], cos, sin,
                                        torch.tensor([13], device=DEVICE))
    assert torch.equal(step_q, full_q[:, :, 13:14]) and torch.equal(step_k, full_k[:, :, 13:14])


@pytest.mark.parametrize("b,hq,hkv,t,d,max_len,use_positions", CASES[:3])
def test_torch_path_matches_float64(b, hq, hkv, t, d, max_len, use_positions, monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "torch")
    q, k = randn((b, hq, t, d), torch.float32, 5), randn((b, hkv, t, d), torch.float32, 6)
    positions = torch.arange(max_len - t, max_len, device=DEVICE) if use_positions else None
    check(kernels.apply_rope, q, k, max_len, positions)


@pytest.mark.parametrize("fn", [kernels.apply_rope, apply_rope_torch])
def test_bad_inputs_raise(fn, monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    q, k = torch.zeros(1, 2, 6, 16), torch.zeros(1, 1, 6, 16)
    cos, sin = hf_tables(6, 16)
    with pytest.raises(ValueError, match="longer than"):
        fn(q, k, cos[:5], sin[:5])
    with pytest.raises(ValueError, match=r"lie in \[0, 6\)"):
        fn(q, k, cos, sin, torch.tensor([0, 1, 2, 3, 4, 6]))
    with pytest.raises(ValueError, match="integer tensor"):
        fn(q, k, cos, sin, torch.zeros(6))
    with pytest.raises(ValueError, match="differ in batch"):
        fn(q, torch.zeros(1, 1, 5, 16), cos, sin)
    with pytest.raises(ValueError, match="even"):
        fn(torch.zeros(1, 1, 6, 15), torch.zeros(1, 1, 6, 15), cos, sin)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("t,use_positions", [(4096, False), (1, True), (1000, True)])
def test_bf16_on_gpu(t, use_positions):
    q = randn((2, 16, t, 128), torch.bfloat16, 7)
    k = randn((2, 4, t, 128), torch.bfloat16, 8)
    positions = torch.arange(5000 - t, 5000, device=DEVICE) if use_positions else None
    check(kernels.apply_rope, q, k, 5000, positions)
