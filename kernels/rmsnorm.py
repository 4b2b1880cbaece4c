"""Fused RMSNorm in Triton, forward and backward, plus a plain PyTorch path.

Owns `rms_norm_triton` (the kernels behind one autograd.Function) and `rms_norm_torch` (the
reference path with the same semantics). Dispatch between them lives in kernels/__init__.py.

Forward, per row x of length N (statistics in fp32 whatever the input dtype):
    rstd = 1 / sqrt(mean(x^2) + eps),   xhat = x * rstd,   y = xhat * w
y is rounded once to the input dtype (HF Llama rounds xhat before the weight multiply; the
difference is one rounding). rstd is saved for the backward.

Backward, with g = dy * w:
    dx = rstd * (g - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat
The backward kernel runs a fixed number of programs, each over a contiguous run of rows, keeping
its share of dw in fp32 registers; the per-program partial sums are then added in one small torch
reduction. No atomics, so dw is deterministic. Rows wider than 8192 would not fit x, dy, w and
dw in registers together: their backward reads each row in chunks, twice, and accumulates its dw
partial in memory (a row of the same partial buffer that no other program touches). Row offsets are int64: tensors past 2^31 elements
are fine.
"""
import torch
import triton
import triton.language as tl

from kernels._util import interpreted, last_dim_contiguous

MAX_COLS = 16384


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW_PARTIAL, stride_dy, stride_x, stride_dx, M, N,
                  rows_per_program, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        g = dy * w
        dx = rstd * (g - xhat * (tl.sum(g * xhat, 0) / N))
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=mask)


RESIDENT_MAX = 8192  # widest row the one-pass backward takes; wider ones go to _rms_norm_bwd_wide
WIDE_CHUNK = 4096


@triton.jit
def _rms_norm_bwd_wide(DY, X, W, RSTD, DX, DW_PARTIAL, stride_dy, stride_x, stride_dx, M, N,
                       rows_per_program, CHUNK: tl.constexpr):
    # Rows too wide for x, dy, w and dw to share the registers: each row is read in chunks, twice
    # (the second time from L1/L2), and this program's dw partial (zeroed by the host, written by
    # no other program) is accumulated in global memory, chunk by chunk.
    pid = tl.program_id(0)
    dw_base = DW_PARTIAL + pid.to(tl.int64) * N
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        rstd = tl.load(RSTD + row)
        dot = tl.zeros([CHUNK], dtype=tl.float32)
        for start in range(0, N, CHUNK):
            cols = start + tl.arange(0, CHUNK)
            x, dy, w = _row_chunk(X + row * stride_x, DY + row * stride_dy, W, cols, N)
            dot += dy * w * x
        c = tl.sum(dot, 0) * rstd * rstd / N  # mean(g * xhat) * rstd
        for start in range(0, N, CHUNK):
            cols = start + tl.arange(0, CHUNK)
            x, dy, w = _row_chunk(X + row * stride_x, DY + row * stride_dy, W, cols, N)
            xhat = x * rstd
            tl.store(DX + row * stride_dx + cols, (rstd * (dy * w) - xhat * c).to(DX.dtype.element_ty),
                     mask=cols < N)
            dw = tl.load(dw_base + cols, mask=cols < N, other=0.0)
            tl.store(dw_base + cols, dw + dy * xhat, mask=cols < N)


@triton.jit
def _row_chunk(X_ROW, DY_ROW, W, cols, N):
    mask = cols < N
    x = tl.load(X_ROW + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY_ROW + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    return x, dy, w


def _num_warps(block: int) -> int:
    return 16 if block >= 8192 else 8 if block >= 2048 else 4


def _num_programs(x: torch.Tensor, rows: int) -> int:
    if interpreted(x):
        return min(rows, 4)
    return min(rows, 2 * torch.cuda.get_device_properties(x.device).multi_processor_count)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    return last_dim_contiguous(t.reshape(-1, t.shape[-1]))


# Custom ops, so autograd and torch.compile see one opaque node per call (see attention.py).
@torch.library.custom_op("nanocodec::rms_norm", mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): the normalised rows and the fp32 1/rms per row the backward reuses."""
    x2 = _as_rows(x)
    m, n = x2.shape
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    rstd = torch.empty(m, device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(n)
    if m:
        _rms_norm_fwd[(m,)](x2, weight.contiguous(), y, rstd, x2.stride(0), y.stride(0), n, eps,
                            BLOCK=block, num_warps=_num_warps(block))
    return y.view(x.shape), rstd


@rms_norm_op.register_fake
def _(x, weight, eps):
    rows = x.numel() // x.shape[-1]
    return torch.empty(x.shape, device=x.device, dtype=x.dtype), x.new_empty(rows, dtype=torch.float32)


def backward_launch(block: int) -> tuple:
    """The backward kernel for rows of `block` columns (a power of two), its constexprs and warps:
    what rms_norm_backward_op launches and kernels.compile_check compiles."""
    if block > RESIDENT_MAX:
        return _rms_norm_bwd_wide, dict(CHUNK=WIDE_CHUNK), _num_warps(WIDE_CHUNK)
    return _rms_norm_bwd, dict(BLOCK=block), _num_warps(block)


@torch.library.custom_op("nanocodec::rms_norm_backward", mutates_args=())
def rms_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x2, dy2 = _as_rows(x), _as_rows(dy)
    m, n = x2.shape
    dx = torch.empty((m, n), device=x.device, dtype=x.dtype)
    programs = _num_programs(x2, m)
    kernel, constexprs, warps = backward_launch(triton.next_power_of_2(n))
    wide = kernel is _rms_norm_bwd_wide
    # The wide kernel adds into its partial row in memory, so that row starts at zero.
    partial = (torch.zeros if wide else torch.empty)((programs, n), device=x.device,
                                                     dtype=torch.float32)
    if m:
        args = (dy2, x2, weight.contiguous(), rstd, dx, partial, dy2.stride(0), x2.stride(0),
                dx.stride(0), m, n, triton.cdiv(m, programs))
        kernel[(programs,)](*args, **constexprs, num_warps=warps)
    return dx.view(x.shape), partial.sum(0).to(weight.dtype)


@rms_norm_backward_op.register_fake
def _(dy, x, weight, rstd):
    return torch.empty(x.shape, device=x.device, dtype=x.dtype), torch.empty_like(weight)


def _rms_norm_setup_context(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_backward(ctx, dy: torch.Tensor, _drstd: torch.Tensor):
    dx, dw = rms_norm_backward_op(dy, *ctx.saved_tensors)
    return dx, dw, None


rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup_context)


def check_rms_norm_inputs(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise ValueError naming the argument when x and weight do not fit together."""
    if x.dim() == 0:
        raise ValueError("rms_norm: x must have at least one dimension, got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(f"rms_norm: the last dim of x {tuple(x.shape)} is empty")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} must be ({x.shape[-1]},), "
                         f"the last dim of x {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"rms_norm: x on {x.device} but weight on {weight.device}")


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim through the Triton kernels; differentiable in x and weight."""
    check_rms_norm_inputs(x, weight)
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"rms_norm: the Triton kernel handles rows up to {MAX_COLS}, got "
                         f"{x.shape[-1]} (NANOCODEC_KERNELS=torch runs any length)")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"rms_norm: unsupported dtype {x.dtype} (float32, float16, bfloat16)")
    return rms_norm_op(x, weight, float(eps))[0]


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The same RMSNorm in plain PyTorch, for CPUs and as the readable reference."""
    check_rms_norm_inputs(x, weight)
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(compute)).to(x.dtype)
