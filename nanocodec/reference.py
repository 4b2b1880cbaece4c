"""The plain PyTorch reference Llama: nanocodec.model.Llama's function written with nothing but torch
ops and F.scaled_dot_product_attention, under the same parameter names, so that one state dict
loads into both.

Owns `PlainLlama` (and its `PlainBlock`): the oracle tests/test_model.py holds our model to and the
baseline `python -m nanocodec.bench train` times it against. No KV cache, kernels, activation
checkpointing or initialisation of its own; load our model's weights into it.
Does not own: the model that trains and samples (nanocodec.model).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanocodec.model import ModelConfig, rope_tables


class PlainBlock(nn.Module):
    """One transformer block: RMSNorm, grouped-query attention with RoPE, RMSNorm, SwiGLU."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c = c
        self.attention_norm = nn.Module()
        self.attention_norm.weight = nn.Parameter(torch.ones(c.dim))
        self.attention = nn.Module()
        self.attention.wqkv = nn.Linear(c.dim, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, bias=False)
        self.attention.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        self.ffn_norm = nn.Module()
        self.ffn_norm.weight = nn.Parameter(torch.ones(c.dim))
        self.feed_forward = nn.Module()
        self.feed_forward.w1 = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.feed_forward.w3 = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.feed_forward.w2 = nn.Linear(c.hidden_dim, c.dim, bias=False)

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.c.norm_eps)).type_as(x) * weight

    @staticmethod
    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c, (B, T, _) = self.c, x.shape
        qkv = self.attention.wqkv(self.norm(x, self.attention_norm.weight))
        q, k, v = qkv.split((c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim), dim=-1)
        q = self.rope(q.view(B, T, c.n_heads, c.head_dim).transpose(1, 2), cos, sin)
        k = self.rope(k.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2), cos, sin)
        v = v.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=c.n_kv_heads != c.n_heads)
        x = x + self.attention.wo(y.transpose(1, 2).reshape(B, T, -1))
        h = self.norm(x, self.ffn_norm.weight)
        return x + self.feed_forward.w2(F.silu(self.feed_forward.w1(h)) * self.feed_forward.w3(h))


class PlainLlama(nn.Module):
    """Llama in plain PyTorch, parameter names identical to nanocodec.model.Llama's."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(PlainBlock(c) for _ in range(c.n_layers))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(c.dim))
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.norm_eps = c.norm_eps
        cos, sin = rope_tables(c.head_dim, c.max_seq_len, c.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        T = tokens.shape[1]
        x = self.tok_embeddings(tokens)
        for block in self.layers:
            x = block(x, self.cos[:T], self.sin[:T])
        xf = x.float()
        x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.norm_eps)).type_as(x) * self.norm.weight
        logits = self.output(x).float()
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss
