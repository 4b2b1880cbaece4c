"""Flash attention (FlashAttention-2 style) in Triton, forward and backward, plus a plain PyTorch path.

Owns `attention_triton` (the kernels behind the custom ops nanocodec::flash_attention, its
backward, and nanocodec::attention_decode), `attention_torch` (the reference path with the same
semantics) and the per-arch autotune lists (CONFIGS). Dispatch between the two paths lives in
kernels/__init__.py; `python -m kernels.compile_check` checks every config compiles clean.

Shapes: q (B, Hq, Tq, D), k and v (B, Hkv, Tk, D) with Hkv dividing Hq (grouped-query attention:
q head h reads kv head h // (Hq / Hkv); K and V are never repeated in memory) and Tq <= Tk.
Causal alignment is bottom-right: query i may see key j iff j <= i + (Tk - Tq), so a KV-cache
decode step (Tq new queries after Tk - Tq cached keys) sees the whole cache.

Forward, per query row i, with s_ij = scale * q_i . k_j over the visible keys j:
    o_i = sum_j softmax(s_i)_j v_j,   lse_i = log sum_j exp(s_ij)
computed block by block with the online softmax in base 2: the scores are multiplied by
scale * log2(e) once, so every exponential is an exp2, and the running max m and sum l rescale the
accumulator by exp2(m_old - m_new) whenever the max grows. The base-2 log-sum-exp m + log2(l) is
saved for the backward. Key blocks entirely below the causal diagonal run without any mask; only
the blocks that straddle the diagonal or the sequence end apply one (a second loop stage).

Decoding (split-K, flash-decoding): with few queries (Tq <= 16) over a long cache and no gradient
wanted, the keys are cut into ranges and one program per (range, kv head, batch row) attends all
GROUP * Tq query rows of its kv head to its range, writing a partial (o_s, lse_s) in fp32; a second
kernel merges them exactly: o = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), M = max_s lse_s.

Backward, with p_ij = exp2(s_ij * log2(e) - lse2_i) recomputed from the saved LSE:
    delta_i = sum_d dO_id O_id                      (preprocess kernel)
    dV_j    = sum_i p_ij dO_i
    dS_ij   = p_ij (dO_i . v_j - delta_i)
    dK_j    = scale * sum_i dS_ij q_i               (one program per key block, loops over query
                                                     blocks and over the q heads of its kv group;
                                                     one loop, masked throughout when causal)
    dQ_i    = scale * sum_j dS_ij k_j               (one program per query block, loops over keys)
Every output element is written by exactly one program in a fixed order: no atomics, so the
backward is deterministic.
"""
import functools
import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels._util import interpreted, last_dim_contiguous

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)


@triton.jit
def _softmax_update(acc, l_i, m_i, s, v, PRECISION: tl.constexpr):
    # One online-softmax step: fold a key block's base-2 scores s (masked ones -inf) and its values
    # v into the running max m_i, sum l_i and accumulator acc.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, lo, hi, Tk,
               causal_shift, qk_scale,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
               HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            in_range = offs_n[:, None] < Tk
            k = tl.load(k_ptrs, mask=in_range, other=0.0)
            v = tl.load(v_ptrs, mask=in_range, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            keep = offs_n[None, :] < Tk
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + causal_shift)
            s = tl.where(keep, s, float("-inf"))
        acc, l_i, m_i = _softmax_update(acc, l_i, m_i, s, v, PRECISION)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE,
              stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
              Hq, GROUP, Tq, Tk, qk_scale, TQ_BUCKET, TK_BUCKET,
              CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    if CAUSAL:
        # Longest query blocks first: they have the most keys, so the tail of the grid is short.
        start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    else:
        start_m = tl.program_id(0) * BLOCK_M
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    row_base = (off_b * Hq + off_h) * Tq
    off_kvh = off_h // GROUP
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    v_base = V + off_b * stride_vb + off_kvh * stride_vh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Tq
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    causal_shift = Tk - Tq
    if CAUSAL:
        # Keys below diag_lo are visible to every row of this block; keys from diag_hi on to none.
        diag_lo = ((start_m + causal_shift) // BLOCK_N) * BLOCK_N
        diag_hi = tl.minimum(start_m + BLOCK_M + causal_shift, Tk)
    else:
        diag_lo = (Tk // BLOCK_N) * BLOCK_N
        diag_hi = Tk
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m,
                               0, diag_lo, Tk, causal_shift, qk_scale, False, CAUSAL, BLOCK_N,
                               HEAD_DIM, PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m,
                               diag_lo, diag_hi, Tk, causal_shift, qk_scale, True, CAUSAL,
                               BLOCK_N, HEAD_DIM, PRECISION)

    o = acc / l_i[:, None]
    tl.store(O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om
             + offs_d[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + row_base + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_dob, stride_doh,
                    stride_dom, Hq, Tq, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    row_base = (off_b * Hq + off_h) * Tq
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Tq
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + row_base + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                    offs_n, lo, hi, Tq, causal_shift, qk_scale,
                    MASKED: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
                    PRECISION: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Tq
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        # Rows past Tq load q = dO = 0, lse = delta = 0: their p is 1 and their dS is 0, so they
        # add nothing to dK or dV.
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
                           - lse[None, :])
        if MASKED:
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + causal_shift, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV,
                   stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                   stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                   Hq, GROUP, Tq, Tk, qk_scale, scale, TQ_BUCKET, TK_BUCKET,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    off_kvh = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n[:, None] < Tk
    k = tl.load(K + off_b * stride_kb + off_kvh * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :], mask=key_ok, other=0.0)
    v = tl.load(V + off_b * stride_vb + off_kvh * stride_vh + offs_n[:, None] * stride_vn
                + offs_d[None, :], mask=key_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    causal_shift = Tk - Tq
    # Queries before q_lo see no key of this block. One loop, masked throughout when causal: a
    # second, unmasked copy of the loop for the fully visible blocks (as the forward has) costs
    # registers this kernel does not have at head dim 128 (dK, dV, K and V stay resident).
    q_lo = tl.maximum(start_n - causal_shift, 0) if CAUSAL else 0
    for g in range(GROUP):
        off_h = off_kvh * GROUP + g
        q_base = Q + off_b * stride_qb + off_h * stride_qh
        do_base = DO + off_b * stride_dob + off_h * stride_doh
        row_base = (off_b * Hq + off_h) * Tq
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base,
                                 stride_qm, stride_dom, offs_n, q_lo, Tq, Tq, causal_shift,
                                 qk_scale, CAUSAL, BLOCK_M, HEAD_DIM, PRECISION)
    dk = dk * scale
    tl.store(DK + off_b * stride_dkb + off_kvh * stride_dkh + offs_n[:, None] * stride_dkn
             + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + off_b * stride_dvb + off_kvh * stride_dvh + offs_n[:, None] * stride_dvn
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=key_ok)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, lo, hi,
                  Tk, causal_shift, qk_scale,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            in_range = offs_n[:, None] < Tk
            k = tl.load(k_ptrs, mask=in_range, other=0.0)
            v = tl.load(v_ptrs, mask=in_range, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                         - lse[:, None])
        if MASKED:
            keep = offs_n[None, :] < Tk
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + causal_shift)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                 stride_dqb, stride_dqh, stride_dqm,
                 Hq, GROUP, Tq, Tk, qk_scale, scale, TQ_BUCKET, TK_BUCKET,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    if CAUSAL:
        start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    else:
        start_m = tl.program_id(0) * BLOCK_M
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    row_base = (off_b * Hq + off_h) * Tq
    off_kvh = off_h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Tq
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    v_base = V + off_b * stride_vb + off_kvh * stride_vh

    causal_shift = Tk - Tq
    if CAUSAL:
        diag_lo = ((start_m + causal_shift) // BLOCK_N) * BLOCK_N
        diag_hi = tl.minimum(start_m + BLOCK_M + causal_shift, Tk)
    else:
        diag_lo = (Tk // BLOCK_N) * BLOCK_N
        diag_hi = Tk
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, 0,
                       diag_lo, Tk, causal_shift, qk_scale, False, CAUSAL, BLOCK_N, HEAD_DIM,
                       PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m,
                       diag_lo, diag_hi, Tk, causal_shift, qk_scale, True, CAUSAL, BLOCK_N,
                       HEAD_DIM, PRECISION)
    dq = dq * scale
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqm
             + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_decode_split(Q, K, V, O_PART, LSE_PART,
                       stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn,
                       Hkv, GROUP, Tq, Tk, split_len, num_splits, qk_scale,
                       CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    # One program: all GROUP * Tq query rows of one kv head (row r is q head kvh * GROUP + r // Tq,
    # query r % Tq, so the group shares each K/V load) against keys [lo, lo + split_len).
    split = tl.program_id(0)
    off_kvh = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP * Tq
    q_head = off_kvh * GROUP + rows // Tq
    q_pos = rows % Tq
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + off_b * stride_qb + q_head[:, None] * stride_qh + q_pos[:, None] * stride_qm
                + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    v_base = V + off_b * stride_vb + off_kvh * stride_vh

    # A finite floor instead of -inf: a row may see no key of this split, and -inf - -inf is NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, Tk)
    last_key = q_pos + (Tk - Tq)  # causal: the last key each row sees
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_range = offs_n < hi
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                    mask=in_range[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=in_range[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        keep = in_range[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= last_key[:, None])
        s = tl.where(keep, s, float("-inf"))
        acc, l_i, m_i = _softmax_update(acc, l_i, m_i, s, v, PRECISION)

    seen = l_i > 0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    # Partials are (B, Hkv, splits, BLOCK_M, D) and (B, Hkv, splits, BLOCK_M), contiguous.
    part = ((off_b * Hkv + off_kvh) * num_splits + split) * BLOCK_M + rows
    tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], o, mask=row_ok[:, None])
    tl.store(LSE_PART + part, lse, mask=row_ok)


@triton.jit
def _attn_decode_combine(O_PART, LSE_PART, O, stride_ob, stride_oh, stride_om,
                         Hkv, GROUP, Tq, num_splits,
                         BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK: tl.constexpr,
                         HEAD_DIM: tl.constexpr):
    # One program per query row: o = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), M = max lse_s.
    # The weights come from all splits at once; the (splits, D) partials in chunks, so a few
    # hundred splits never sit in registers together.
    row = tl.program_id(0)
    off_kvh = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    part_base = (off_b * Hkv + off_kvh) * num_splits
    splits = tl.arange(0, BLOCK_S)
    lse = tl.load(LSE_PART + (part_base + splits) * BLOCK_M + row, mask=splits < num_splits,
                  other=float("-inf"))
    m = tl.max(lse, 0)  # every row sees key 0, so some split's lse is finite
    w_sum = tl.sum(tl.math.exp2(lse - m), 0)
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(0, num_splits, CHUNK):
        chunk = start + tl.arange(0, CHUNK)
        ok = chunk < num_splits
        part = (part_base + chunk) * BLOCK_M + row
        w = tl.math.exp2(tl.load(LSE_PART + part, mask=ok, other=float("-inf")) - m)
        o = tl.load(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None],
                    other=0.0)
        acc += tl.sum(o * w[:, None], 0)
    q_head = off_kvh * GROUP + row // Tq
    tl.store(O + off_b * stride_ob + q_head * stride_oh + (row % Tq) * stride_om + offs_d,
             (acc / w_sum).to(O.dtype.element_ty))


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, arch (80: A100 and other sm_8x; 90: H100
# and newer) and head dim (64 stands for 16..64). `python -m kernels.compile_check` compiles every
# entry for sm_80 and sm_90 in bf16 and fp16, causal or not, and each one spills no register and
# fits the chip's shared memory; tiles stay FlashAttention-sized (at least 64 x 32 elements).
# At head dim 128 the dK/dV kernel holds K, V, dK and dV for its whole key block (at 8 warps and
# 128 keys, 192 of the 255 registers a thread may have): on sm_80, where both mma.sync operands
# are registers, 128-key blocks spill, and 64-key blocks of 64 or 128 queries fit only without
# software pipelining (num_stages=1: no second stage of q/dO tiles in flight).
CONFIGS: dict[tuple[str, int, int], list[tuple[int, int, int, int]]] = {
    ("fwd", 80, 64): [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)],
    ("fwd", 80, 128): [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 128, 8, 2),
                       (64, 64, 4, 3)],
    ("fwd", 90, 64): [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)],
    ("fwd", 90, 128): [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 128, 8, 2),
                       (128, 32, 8, 3)],
    ("bwd_dkdv", 80, 64): [(32, 128, 8, 3), (32, 128, 8, 2), (32, 64, 4, 3)],
    ("bwd_dkdv", 80, 128): [(128, 64, 8, 1), (64, 64, 8, 1), (32, 64, 8, 2), (32, 64, 8, 3),
                           (16, 128, 8, 2)],
    ("bwd_dkdv", 90, 64): [(32, 128, 8, 3), (32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3)],
    ("bwd_dkdv", 90, 128): [(32, 128, 8, 2), (64, 64, 8, 2), (32, 64, 8, 2), (32, 64, 8, 3)],
    ("bwd_dq", 80, 64): [(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3)],
    ("bwd_dq", 80, 128): [(128, 32, 8, 2), (128, 32, 8, 3), (64, 64, 8, 2), (64, 64, 8, 3),
                          (64, 32, 4, 2)],
    ("bwd_dq", 90, 64): [(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3)],
    ("bwd_dq", 90, 128): [(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 8, 2), (64, 64, 8, 3),
                          (64, 64, 4, 2)],
}
KERNELS = {"fwd": _attn_fwd, "bwd_dkdv": _attn_bwd_dkdv, "bwd_dq": _attn_bwd_dq}
# The autotuner keys on head dim, causality, GQA group and the power-of-two bucket of the lengths,
# so a new sequence length seldom retunes.
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "GROUP", "TQ_BUCKET", "TK_BUCKET"]


def config_arch(capability: tuple[int, int]) -> int:
    """The CONFIGS column for a GPU of this compute capability."""
    return 90 if capability[0] >= 9 else 80


def tuned_configs(kind: str, arch: int, head_dim: int) -> list[triton.Config]:
    """The autotune list of kernel `kind` on `arch` (80 or 90) at `head_dim`."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in CONFIGS[kind, arch, 64 if head_dim <= 64 else 128]]


@functools.cache
def _tuned(kind: str, arch: int, head_dim: int) -> triton.runtime.Autotuner:
    return triton.autotune(tuned_configs(kind, arch, head_dim), key=_TUNE_KEY)(KERNELS[kind])


def _gpu_kernel(kind: str, q: torch.Tensor) -> triton.runtime.Autotuner:
    return _tuned(kind, config_arch(torch.cuda.get_device_capability(q.device)), q.shape[-1])


DELTA_BLOCK = 64
# The CPU interpreter runs one fixed, small configuration (it cannot autotune and pays per program).
# BLOCK_M != BLOCK_N on purpose, so tests cover diagonal blocks that straddle block edges.
INTERPRETER_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


def _bucket(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError naming the argument when shapes, dtypes or devices do not fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be (batch, heads, seq, head_dim), got shape "
                             f"{tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} differ in shape")
    (b, hq, tq, d), (bk, hkv, tk, dk) = q.shape, k.shape
    if b != bk or d != dk:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch "
                         "or head_dim")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"attention: kv heads ({hkv}) must divide q heads ({hq})")
    if tq > tk:
        raise ValueError(f"attention: q_len ({tq}) must not exceed k_len ({tk})")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"attention: q, k, v are on different devices ({q.device}, {k.device}, "
                         f"{v.device})")


def _launch_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, hq, tq), device=q.device, dtype=torch.float32)
    args = (q, k, v, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            hq, hq // hkv, tq, tk, scale * LOG2E, _bucket(tq), _bucket(tk))
    meta = dict(CAUSAL=causal, HEAD_DIM=d, PRECISION=_precision(q))
    if interpreted(q):
        block_m, block_n = INTERPRETER_BLOCKS["fwd"]
        _attn_fwd[(triton.cdiv(tq, block_m), hq, b)](*args, BLOCK_M=block_m, BLOCK_N=block_n,
                                                      **meta)
    else:
        _gpu_kernel("fwd", q)[lambda cfg: (triton.cdiv(tq, cfg["BLOCK_M"]), hq, b)](*args, **meta)
    return o, lse


def _launch_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     o: torch.Tensor, lse: torch.Tensor, causal: bool,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    do = last_dim_contiguous(do)
    delta = torch.empty_like(lse)
    delta_block = 32 if interpreted(q) else DELTA_BLOCK
    _attn_bwd_delta[(triton.cdiv(tq, delta_block), hq, b)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], hq, tq, BLOCK_M=delta_block, HEAD_DIM=d)

    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    sizes = (tq, tk, scale * LOG2E, scale, _bucket(tq), _bucket(tk))
    meta = dict(CAUSAL=causal, HEAD_DIM=d, PRECISION=_precision(q))
    dkdv_args = (q, k, v, do, lse, delta, dk, dv, *common, *dk.stride()[:3], *dv.stride()[:3],
                 hq, hq // hkv, *sizes)
    dq_args = (q, k, v, do, lse, delta, dq, *common, *dq.stride()[:3], hq, hq // hkv, *sizes)
    if interpreted(q):
        block_m, block_n = INTERPRETER_BLOCKS["dkdv"]
        _attn_bwd_dkdv[(triton.cdiv(tk, block_n), hkv, b)](*dkdv_args, BLOCK_M=block_m,
                                                            BLOCK_N=block_n, **meta)
        block_m, block_n = INTERPRETER_BLOCKS["dq"]
        _attn_bwd_dq[(triton.cdiv(tq, block_m), hq, b)](*dq_args, BLOCK_M=block_m,
                                                         BLOCK_N=block_n, **meta)
    else:
        _gpu_kernel("bwd_dkdv", q)[lambda cfg: (triton.cdiv(tk, cfg["BLOCK_N"]), hkv, b)](
            *dkdv_args, **meta)
        _gpu_kernel("bwd_dq", q)[lambda cfg: (triton.cdiv(tq, cfg["BLOCK_M"]), hq, b)](
            *dq_args, **meta)
    return dq, dk, dv


# Split-K decoding: a step with few queries (Tq <= DECODE_MAX_TQ) over a long cache launches one
# program per (key range, kv head, batch row) instead of one per (query block, head, batch row),
# which for Tq = 1 would leave most of a GPU idle.
DECODE_MAX_TQ = 16
DECODE_MAX_ROWS = 128  # GROUP * Tq rows share one program; more than this takes the plain forward
DECODE_MIN_SPLIT = 256  # keys per split: below this a program's work does not pay for its launch
DECODE_MAX_SPLITS = 256
COMBINE_CHUNK = 16
INTERPRETER_DECODE_PROGRAMS = 8


def decode_splits(q: torch.Tensor, k: torch.Tensor) -> int:
    """How many key ranges split-K decoding would use for q over k; 1 means take the plain forward."""
    b, hq, tq, _ = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if tq > DECODE_MAX_TQ or (hq // hkv) * tq > DECODE_MAX_ROWS or os.environ.get(
            "NANOCODEC_SPLIT_K", "1") == "0":
        return 1
    if interpreted(q):
        programs = INTERPRETER_DECODE_PROGRAMS
    else:  # two waves of programs over the SMs
        programs = 2 * torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(triton.cdiv(tk, DECODE_MIN_SPLIT), triton.cdiv(programs, b * hkv),
                      DECODE_MAX_SPLITS))


def decode_config(block_m: int, head_dim: int, arch: int) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) of the split kernel; python -m kernels.compile_check
    compiles each one the dispatch can pick."""
    warps = 4 if block_m * head_dim <= 32 * 128 else 8
    return 64, warps, 3 if arch >= 90 else 2


@torch.library.custom_op("nanocodec::attention_decode", mutates_args=())
def attention_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                     scale: float, num_splits: int) -> torch.Tensor:
    """Split-K forward (no autograd): each of `num_splits` key ranges is attended separately, then a
    second kernel merges the partial (output, log-sum-exp) pairs exactly."""
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = hq // hkv
    block_m = max(16, triton.next_power_of_2(group * tq))
    if interpreted(q):
        block_n, meta = 16, {}
    else:
        arch = config_arch(torch.cuda.get_device_capability(q.device))
        block_n, warps, stages = decode_config(block_m, d, arch)
        meta = dict(num_warps=warps, num_stages=stages)
    split_len = triton.cdiv(triton.cdiv(tk, num_splits), block_n) * block_n
    num_splits = triton.cdiv(tk, split_len)
    o_part = torch.empty((b, hkv, num_splits, block_m, d), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((b, hkv, num_splits, block_m), device=q.device, dtype=torch.float32)
    _attn_decode_split[(num_splits, hkv, b)](
        q, k, v, o_part, lse_part, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        hkv, group, tq, tk, split_len, num_splits, scale * LOG2E,
        CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=d, PRECISION=_precision(q),
        **meta)
    o = torch.empty((b, hq, tq, d), device=q.device, dtype=q.dtype)
    _attn_decode_combine[(group * tq, hkv, b)](
        o_part, lse_part, o, *o.stride()[:3], hkv, group, tq, num_splits,
        BLOCK_M=block_m, BLOCK_S=triton.next_power_of_2(num_splits), CHUNK=COMBINE_CHUNK,
        HEAD_DIM=d)
    return o


@attention_decode.register_fake
def _(q, k, v, causal, scale, num_splits):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _precision(q: torch.Tensor) -> str:
    # fp32 inputs get true fp32 products (not TF32) so the fp32 path means what it says.
    return "ieee" if q.dtype == torch.float32 else "tf32"


# The kernels enter autograd and torch.compile as custom ops: compiled graphs keep each call as one
# opaque node (no graph break per layer), the fake functions give compile the output shapes, and
# the backward op is the registered gradient of the forward op.
@torch.library.custom_op("nanocodec::flash_attention", mutates_args=())
def flash_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse2): the output and the base-2 log-sum-exp per query row that the backward reuses."""
    return _launch_forward(q, k, v, causal, scale)


@flash_attention_op.register_fake
def _(q, k, v, causal, scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(q.shape[:3], dtype=torch.float32))


@torch.library.custom_op("nanocodec::flash_attention_backward", mutates_args=())
def flash_attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, causal: bool,
                                scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_backward(do, q, k, v, o, lse, causal, scale)


@flash_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, causal, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _attention_setup_context(ctx, inputs, output) -> None:
    q, k, v, causal, scale = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.causal, ctx.scale = causal, scale


def _attention_backward(ctx, do: torch.Tensor, _dlse: torch.Tensor):
    dq, dk, dv = flash_attention_backward_op(do, *ctx.saved_tensors, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


flash_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def _resolve_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                     scale: float | None = None) -> torch.Tensor:
    """Flash attention through the Triton kernels; differentiable in q, k and v."""
    check_attention_inputs(q, k, v)
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"attention: the Triton kernels support head_dim in {HEAD_DIMS}, got "
                         f"{q.shape[-1]} (NANOCODEC_KERNELS=torch runs any head_dim)")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention: unsupported dtype {q.dtype} (float32, float16, bfloat16)")
    if q.numel() == 0:
        return attention_torch(q, k, v, causal, scale)
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if not needs_grad:
        splits = decode_splits(q, k)
        if splits > 1:
            return attention_decode(q, k, v, causal, _resolve_scale(q, scale), splits)
    return flash_attention_op(q, k, v, causal, _resolve_scale(q, scale))[0]


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """The same attention in plain PyTorch (SDPA), for CPUs and as the readable reference."""
    check_attention_inputs(q, k, v)
    tq, tk = q.shape[2], k.shape[2]
    mask = None
    if causal and 1 < tq != tk:  # one query (a decode step) sees every key: no mask at all
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                          is_causal=causal and tq == tk > 1,
                                          scale=_resolve_scale(q, scale),
                                          enable_gqa=q.shape[1] != k.shape[1])
