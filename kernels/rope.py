"""Rotary position embedding (RoPE) in Triton, forward and backward, plus a plain PyTorch path.

Owns `apply_rope_triton` (the kernel behind one autograd.Function) and `apply_rope_torch` (the
reference path with the same semantics). Dispatch between them lives in kernels/__init__.py.

Layout is HuggingFace Llama's rotate-half: cos and sin are (S, D) tables whose two halves repeat
the same D/2 angles, and row t of x (split into halves x1, x2) becomes
    out = x * cos[p] + rotate_half(x) * sin[p],   rotate_half(x) = (-x2, x1)
that is  out1 = x1 c1 - x2 s1,  out2 = x2 c2 + x1 s2,  with p = t, or p = positions[t] when
absolute positions are given (KV-cache decoding). The arithmetic is fp32; the result is rounded
once to the input dtype. cos and sin are constants: they get no gradient.

Backward is the transpose of that linear map,
    dx1 = do1 c1 + do2 s2,   dx2 = do2 c2 - do1 s1,
which for Llama tables (c1 = c2, s1 = s2) is the rotation by the opposite angle: the same kernel
with (s1, s2) replaced by (-s2, -s1).

One launch rotates q and k together: the grid's head axis runs over the Hq query heads and then
the Hkv key heads, and each program rotates a block of tokens of one head.
"""
import torch
import triton
import triton.language as tl

from kernels._util import last_dim_contiguous


@triton.jit
def _rotate_tile(X, OUT, stride_xt, stride_ot, offs_t, offs_d, mask, c1, c2, sa, sb,
                 HALF: tl.constexpr):
    x_ptrs = X + offs_t[:, None] * stride_xt + offs_d[None, :]
    o_ptrs = OUT + offs_t[:, None] * stride_ot + offs_d[None, :]
    x1 = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptrs, (x1 * c1 - x2 * sa).to(OUT.dtype.element_ty), mask=mask)
    tl.store(o_ptrs + HALF, (x2 * c2 + x1 * sb).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN, POS,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                 stride_qob, stride_qoh, stride_qot, stride_kob, stride_koh, stride_kot,
                 stride_cos, stride_sin, T, Hq,
                 HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_T: tl.constexpr,
                 HAS_POS: tl.constexpr, BACKWARD: tl.constexpr):
    offs_t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    head = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    t_ok = offs_t < T
    if HAS_POS:
        pos = tl.load(POS + offs_t, mask=t_ok, other=0)
    else:
        pos = offs_t
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = t_ok[:, None] & (offs_d[None, :] < HALF)
    cos_ptrs = COS + pos[:, None] * stride_cos + offs_d[None, :]
    sin_ptrs = SIN + pos[:, None] * stride_sin + offs_d[None, :]
    c1 = tl.load(cos_ptrs, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptrs, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        sa = -s2
        sb = -s1
    else:
        sa = s1
        sb = s2
    if head < Hq:
        h = head.to(tl.int64)
        _rotate_tile(Q + b * stride_qb + h * stride_qh, QO + b * stride_qob + h * stride_qoh,
                     stride_qt, stride_qot, offs_t, offs_d, mask, c1, c2, sa, sb, HALF)
    else:
        h = (head - Hq).to(tl.int64)
        _rotate_tile(K + b * stride_kb + h * stride_kh, KO + b * stride_kob + h * stride_koh,
                     stride_kt, stride_kot, offs_t, offs_d, mask, c1, c2, sa, sb, HALF)


TILE = 2048  # elements of one half-head tile a program rotates


def token_blocks(half: int) -> list[int]:
    """Every BLOCK_T `_launch` can pick for head dim 2 * half, largest (long sequences) first."""
    top = max(1, TILE // triton.next_power_of_2(half))
    return [1 << i for i in reversed(range(top.bit_length()))]


def _launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            positions: torch.Tensor | None, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, cos, sin = (last_dim_contiguous(x) for x in (q, k, cos, sin))
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    qo = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    ko = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    if qo.numel() + ko.numel() == 0:
        return qo, ko
    block_half = triton.next_power_of_2(d // 2)
    block_t = min(max(1, TILE // block_half), triton.next_power_of_2(t))
    grid = (triton.cdiv(t, block_t), hq + hkv, b)
    _rope_kernel[grid](q, k, qo, ko, cos, sin, cos if positions is None else positions,
                       *q.stride()[:3], *k.stride()[:3], *qo.stride()[:3], *ko.stride()[:3],
                       cos.stride(0), sin.stride(0), t, hq,
                       HALF=d // 2, BLOCK_HALF=block_half, BLOCK_T=block_t,
                       HAS_POS=positions is not None, BACKWARD=backward, num_warps=4)
    return qo, ko


# A custom op, so autograd and torch.compile see one opaque node per call (see attention.py).
@torch.library.custom_op("nanocodec::rope", mutates_args=())
def rope_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            positions: torch.Tensor | None, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k rotated (backward=False) or rotated back (backward=True, the gradient)."""
    return _launch(q, k, cos, sin, positions, backward)


@rope_op.register_fake
def _(q, k, cos, sin, positions, backward):
    return torch.empty(q.shape, device=q.device, dtype=q.dtype), torch.empty(k.shape, device=k.device, dtype=k.dtype)


def _rope_setup_context(ctx, inputs, output) -> None:
    _, _, cos, sin, positions, _ = inputs
    ctx.save_for_backward(cos, sin, positions)


def _rope_backward(ctx, dq: torch.Tensor, dk: torch.Tensor):
    cos, sin, positions = ctx.saved_tensors
    dq, dk = rope_op(dq, dk, cos, sin, positions, True)
    return dq, dk, None, None, None, None


rope_op.register_autograd(_rope_backward, setup_context=_rope_setup_context)


def check_rope_inputs(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      positions: torch.Tensor | None) -> torch.Tensor | None:
    """Raise ValueError naming the argument on a mismatch; return positions as int64 on q's device."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"apply_rope: q {tuple(q.shape)} and k {tuple(k.shape)} must be "
                         "(batch, heads, seq, head_dim)")
    b, _, t, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, t, d):
        raise ValueError(f"apply_rope: q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, "
                         "seq or head_dim")
    if d % 2:
        raise ValueError(f"apply_rope: head_dim must be even, got {d}")
    if q.dtype != k.dtype:
        raise ValueError(f"apply_rope: q is {q.dtype} but k is {k.dtype}")
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[1] != d:
        raise ValueError(f"apply_rope: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must both "
                         f"be (max_seq, {d})")
    if len({q.device, k.device, cos.device, sin.device}) != 1:
        raise ValueError("apply_rope: q, k, cos and sin must be on one device")
    table_len = cos.shape[0]
    if positions is None:
        if t > table_len:
            raise ValueError(f"apply_rope: seq {t} is longer than the cos/sin table ({table_len})")
        return None
    if positions.shape != (t,) or positions.is_floating_point() or positions.is_complex():
        raise ValueError(f"apply_rope: positions must be an integer tensor of shape ({t},), got "
                         f"{positions.dtype} {tuple(positions.shape)}")
    positions = positions.to(device=q.device, dtype=torch.int64)
    # Checking the range of CUDA positions would cost a device sync on every decode step.
    if not positions.is_cuda and t and (positions.min() < 0 or positions.max() >= table_len):
        raise ValueError(f"apply_rope: positions must lie in [0, {table_len}), got "
                         f"[{int(positions.min())}, {int(positions.max())}]")
    return positions


def apply_rope_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k through the Triton kernel; differentiable in q and k."""
    positions = check_rope_inputs(q, k, cos, sin, positions)
    return rope_op(q, k, cos.detach(), sin.detach(), positions, False)


def apply_rope_torch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rotation in plain PyTorch, for CPUs and as the readable reference."""
    positions = check_rope_inputs(q, k, cos, sin, positions)
    rows = slice(0, q.shape[2]) if positions is None else positions
    compute = torch.promote_types(q.dtype, torch.float32)
    c, s = cos.detach()[rows].to(compute), sin.detach()[rows].to(compute)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.to(compute)
        x1, x2 = xf.chunk(2, dim=-1)
        return (xf * c + torch.cat((-x2, x1), dim=-1) * s).to(x.dtype)

    return rotate(q), rotate(k)
