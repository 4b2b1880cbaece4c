"""Triton kernels for the model (RMSNorm, RoPE, flash attention) and the dispatch to them.

Owns the three public ops `rms_norm`, `apply_rope` and `attention`. Each picks the Triton kernels
for CUDA tensors and the plain PyTorch path (same semantics) for anything else; the environment
variable NANOCODEC_KERNELS=triton or =torch forces one path everywhere (the tests force `triton`
on CPU under TRITON_INTERPRET=1). The kernels themselves live one op per file: rmsnorm.py,
rope.py, attention.py; the benchmark is kernels/bench.py.
"""
import os

import torch

from kernels.attention import attention_torch, attention_triton
from kernels.rmsnorm import rms_norm_torch, rms_norm_triton
from kernels.rope import apply_rope_torch, apply_rope_triton

__all__ = ["rms_norm", "apply_rope", "attention", "backend"]


def backend(t: torch.Tensor) -> str:
    """'triton' or 'torch': the path an op on tensor `t` takes now."""
    forced = os.environ.get("NANOCODEC_KERNELS", "").strip().lower()
    if forced in ("triton", "torch"):
        return forced
    if forced not in ("", "auto"):
        raise ValueError(f"NANOCODEC_KERNELS={forced!r}: expected 'triton', 'torch' or unset")
    return "triton" if t.is_cuda else "torch"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * weight, statistics in fp32; same shape and dtype as x."""
    fn = rms_norm_triton if backend(x) == "triton" else rms_norm_torch
    return fn(x, weight, eps)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, Hq, T, D) and k (B, Hkv, T, D) by HF-Llama cos/sin tables (S, D), S >= T.

    positions: None (row t uses table row t) or an int64 tensor (T,) of absolute positions.
    """
    fn = apply_rope_triton if backend(q) == "triton" else apply_rope_torch
    return fn(q, k, cos, sin, positions)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              scale: float | None = None) -> torch.Tensor:
    """Softmax attention of q (B, Hq, Tq, D) over k, v (B, Hkv, Tk, D); returns (B, Hq, Tq, D).

    Hkv divides Hq (grouped-query attention), Tq <= Tk, and causal alignment is bottom-right:
    query i sees key j iff j <= i + (Tk - Tq). scale defaults to 1/sqrt(D).
    """
    fn = attention_triton if backend(q) == "triton" else attention_torch
    return fn(q, k, v, causal, scale)
