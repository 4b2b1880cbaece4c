"""Triton kernels for the model (RMSNorm, RoPE, flash attention) with a plain PyTorch path."""
