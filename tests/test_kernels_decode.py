"""Split-K (flash-decoding) attention (kernels/attention.py: attention_decode) against float64.

Each key range is attended by its own program and a second kernel merges the partial (output,
log-sum-exp) pairs; the merge must be exact, so the result matches one-pass attention. Shapes stay
small (the interpreter pays per program); the cache is a view into a longer buffer whose unfilled
tail is NaN, so reading past the filled part shows.
"""
import importlib

import pytest
import torch

import kernels
from test_kernels_attention import make_inputs, max_err, naive_attention

A = importlib.import_module("kernels.attention")


@pytest.fixture
def triton_forced(monkeypatch):
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")


def cached(k: torch.Tensor, v: torch.Tensor, spare: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k and v as the filled prefix of a (B, Hkv, Tk + spare, D) cache whose tail is NaN."""
    b, h, tk, d = k.shape
    bufs = [torch.full((b, h, tk + spare, d), float("nan"), dtype=k.dtype) for _ in range(2)]
    for buf, x in zip(bufs, (k, v)):
        buf[:, :, :tk] = x
    return bufs[0][:, :, :tk], bufs[1][:, :, :tk]


def check(q, k, v, causal, out):
    truth = naive_attention(q, k, v, causal, q.shape[-1] ** -0.5, torch.float64)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    if q.dtype == torch.float32:
        assert max_err(out, truth) <= 2e-5
    else:  # FlashAttention's rule: within 2x the error of textbook attention in the same dtype
        low = naive_attention(q, k, v, causal, q.shape[-1] ** -0.5, q.dtype)
        assert max_err(out, truth) <= 2 * max_err(low, truth) + 1e-5


CASES = [  # batch, q heads, kv heads, q_len, k_len, head_dim, splits, dtype
    (1, 2, 1, 1, 1, 16, 1, torch.float32),
    (2, 4, 2, 1, 17, 32, 2, torch.float32),
    (1, 4, 1, 3, 17, 16, 3, torch.float16),
    (1, 2, 2, 16, 17, 32, 2, torch.float32),
    (1, 6, 2, 3, 100, 64, 4, torch.float16),
    (2, 2, 1, 16, 100, 16, 7, torch.float16),
    (1, 8, 1, 16, 40, 16, 2, torch.float32),  # 128 rows: the largest group one program takes
    (1, 2, 1, 1, 300, 16, 19, torch.float32),  # more splits than the merge takes in one chunk
]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("b,hq,hkv,tq,tk,d,splits,dtype", CASES)
def test_split_k_matches_float64(b, hq, hkv, tq, tk, d, splits, dtype, causal, poison):
    q, k, v, _ = make_inputs(b, hq, hkv, tq, tk, d, dtype, seed=tq * 100 + tk + splits)
    kc, vc = cached(k, v, spare=9)
    out = A.attention_decode(q, kc, vc, causal, d ** -0.5, splits)
    check(q, k, v, causal, out)


def test_dispatch_takes_split_k_for_a_long_cache(triton_forced, poison, monkeypatch):
    """Tq = 1 over 4097 cached keys (one past a power of two) goes through split-K by itself."""
    used = []
    real = A.attention_decode
    monkeypatch.setattr(A, "attention_decode", lambda *a: used.append(a[-1]) or real(*a))
    q, k, v, _ = make_inputs(1, 2, 1, 1, 4097, 16, torch.float32, seed=4097)
    kc, vc = cached(k, v, spare=31)
    with torch.no_grad():
        out = kernels.attention(q, kc, vc, causal=True)
    assert used and used[0] > 1
    check(q, k, v, True, out)


def test_dispatch_rule(triton_forced, monkeypatch):
    q1, q17 = torch.zeros(1, 8, 1, 16), torch.zeros(1, 8, 17, 16)
    long, short = torch.zeros(1, 2, 5000, 16), torch.zeros(1, 2, 100, 16)
    assert A.decode_splits(q1, long) > 1
    assert A.decode_splits(q1, short) == 1  # too few keys to split
    assert A.decode_splits(q17, long) == 1  # more queries than a decode step has
    monkeypatch.setenv("NANOCODEC_SPLIT_K", "0")
    assert A.decode_splits(q1, long) == 1


def test_training_never_takes_split_k(triton_forced, monkeypatch):
    monkeypatch.setattr(A, "attention_decode", lambda *a: pytest.fail("split-K has no backward"))
    q, k, v, _ = make_inputs(1, 2, 1, 1, 600, 16, torch.float32, seed=1)
    q.requires_grad_()
    kernels.attention(q, k, v).sum().backward()
    assert q.grad is not None


def test_model_decode_through_split_k_matches_torch(monkeypatch):
    """A cached decode of a small model: Triton (split-K on) vs the torch path, step by step."""
    from nanocodec.model import Llama, ModelConfig

    monkeypatch.setattr(A, "DECODE_MIN_SPLIT", 16)
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=80)).eval()
    tokens = torch.randint(0, 579, (1, 40))
    logits = {}
    for path in ("torch", "triton"):
        monkeypatch.setenv("NANOCODEC_KERNELS", path)
        cache = model.make_cache(1, 48)
        steps = [model.forward_cached(tokens[:, :37], cache)[:, -1]]
        steps += [model.forward_cached(tokens[:, t : t + 1], cache)[:, -1] for t in range(37, 40)]
        logits[path] = torch.stack(steps)
    assert max_err(logits["triton"], logits["torch"]) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tq,hq,hkv,d", [(1, 32, 8, 64), (4, 32, 8, 128), (16, 12, 12, 64)])
def test_bf16_split_k_on_a_12k_cache(tq, hq, hkv, d):
    """The GPU configs (BLOCK_N 64, real split counts) against float64, FlashAttention's rule."""
    g = torch.Generator(device="cuda").manual_seed(tq)
    tk = 12289
    q = torch.randn(1, hq, tq, d, device="cuda", generator=g).bfloat16()
    k, v = (torch.randn(1, hkv, tk + 100, d, device="cuda", generator=g).bfloat16()[:, :, :tk]
            for _ in range(2))
    assert A.decode_splits(q, k) > 1
    out = A.attention_decode(q, k, v, True, d ** -0.5, A.decode_splits(q, k))
    truth = naive_attention(q, k, v, True, d ** -0.5, torch.float64)
    low = naive_attention(q, k, v, True, d ** -0.5, torch.bfloat16)
    assert max_err(out, truth) <= 2 * max_err(low, truth) + 1e-5
