"""The Llama model JPEG-LM / AVC-LM train on codec tokens, with its static KV cache.

Owns: `ModelConfig` and its named presets, the `Llama` module (token embedding; pre-norm blocks of
RMSNorm -> grouped-query attention with RoPE -> residual, RMSNorm -> SwiGLU -> residual; final
RMSNorm; untied output head), its initialisation, the full-sequence forward with the training loss,
the cached forward that sampling uses, and the parameter and FLOP counts behind MFU.
Does not own: the math kernels (kernels/: rms_norm, apply_rope, attention), sampling strategies
(nanocodec.sampling), the training loop (train.py) or checkpoint files (nanocodec.checkpoint).
The model has nothing vision-specific: the paper's point is that a vanilla Llama is enough.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernels import apply_rope, attention, rms_norm


@dataclass
class ModelConfig:
    vocab_size: int = 579  # 256 bytes + 320 BPE merges + <bos>/<eos>/<pad>: the paper's JPEG vocabulary
    dim: int = 128
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int | None = None  # None: Llama's rule, 8/3 * dim rounded up to a multiple of `multiple_of`
    multiple_of: int = 64
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"ModelConfig: dim {self.dim} must split into {self.n_heads} heads of even size "
                             "(RoPE rotates pairs)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"ModelConfig: n_kv_heads {self.n_kv_heads} must divide n_heads {self.n_heads} "
                             "(grouped-query attention)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return self.multiple_of * math.ceil(int(8 * self.dim / 3) / self.multiple_of)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """The named preset with `overrides` applied to its fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    "tiny": dict(dim=128, n_layers=6, n_heads=4, n_kv_heads=2, max_seq_len=1024),  # ~1.3M: the CPU demo
    # GPT-2-small compute (~125M) spent on depth: a 579-token vocabulary has almost no embedding weights.
    "small": dict(dim=768, n_layers=18, n_heads=12, n_kv_heads=12, multiple_of=256, max_seq_len=12288),
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, max_seq_len=12288),  # Llama-3.2-1B
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, max_seq_len=12288),  # Llama-2-7B
}


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (max_seq_len, head_dim), in the rotate-half layout (angles repeated twice)."""
    # Angles in float64: at position 32K a float32 angle is off by up to 2e-3 rad (half an ulp).
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64, device=device), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float(), angles.sin().float()


class KVCache:
    """Static key/value buffers for every layer; `pos` tokens of each row are filled.

    The buffers are allocated once, at the first write, in the dtype the keys arrive in (bf16 under
    autocast), so one cache serves fp32 CPU and bf16 GPU sampling alike.
    """

    def __init__(self, n_layers: int, batch_size: int, max_len: int) -> None:
        self.batch_size, self.max_len, self.pos = batch_size, max_len, 0
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values (B, Hkv, T, D) at `pos`; return all keys/values so far."""
        if self.k[layer] is None:
            shape = (self.batch_size, k.shape[1], self.max_len, k.shape[3])
            self.k[layer] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v[layer] = torch.zeros(shape, dtype=v.dtype, device=v.device)
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, c.n_heads, c.n_kv_heads, c.head_dim
        # One matmul for q, k and v (as gpt-fast does); the split below keeps Llama's semantics.
        self.wqkv = nn.Linear(c.dim, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split((q_size, kv_size, kv_size), dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        y = attention(q, k, v, causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, q_size))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.w3 = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.w2 = nn.Linear(c.hidden_dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.attention = Attention(c, layer)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.feed_forward = FeedForward(c)

    def forward(self, x, cos, sin, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.activation_checkpointing = False  # train.py turns it on to trade compute for memory
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # Derived from the config, so not saved with the weights (persistent=False).
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        """nanoGPT/GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layers)
        so the residual stream's variance does not grow with depth; norms at 1; RoPE tables rebuilt.

        Also the way to materialise a model built on the meta device (after `to_empty`).
        """
        c = self.config
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layers))
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)
        self.init_rope()

    def init_rope(self) -> None:
        """Build the RoPE tables on the weights' device (after `to_empty` or loading onto meta)."""
        c = self.config
        self.rope_cos, self.rope_sin = rope_tables(c.head_dim, c.max_seq_len, c.rope_theta, self.output.weight.device)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, V) in float32 for tokens (B, T), and the mean cross-entropy over the targets
        that are not -100 (None without targets)."""
        T = tokens.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the model's max_seq_len {self.config.max_seq_len}")
        x = self.tok_embeddings(tokens)
        for block in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, self.rope_cos, self.rope_sin, use_reentrant=False)
            else:
                x = block(x, self.rope_cos, self.rope_sin)
        logits = self.output(self.norm(x)).float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` (default max_seq_len) tokens."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        if not 0 < max_len <= self.config.max_seq_len:
            raise ValueError(f"KV cache length {max_len} must be in 1..max_seq_len ({self.config.max_seq_len})")
        return KVCache(self.config.n_layers, batch_size, max_len)

    @torch.no_grad()
    def forward_cached(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append tokens (B, T) at `cache.pos`, advance it by T, and return their logits (B, T, V).

        A prompt is one call (prefill); each sampled token is one call with T=1 (decode).
        """
        B, T = tokens.shape
        if B != cache.batch_size:
            raise ValueError(f"KV cache was made for {cache.batch_size} rows, got a batch of {B}")
        if cache.pos + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens: {cache.pos} used, {T} more do not fit")
        # The new tokens' rows of the RoPE tables, cut once here rather than gathered in every layer.
        cos, sin = self.rope_cos[cache.pos : cache.pos + T], self.rope_sin[cache.pos : cache.pos + T]
        x = self.tok_embeddings(tokens)
        for block in self.layers:
            x = block(x, cos, sin, cache=cache)
        cache.pos += T
        return self.output(self.norm(x)).float()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token at `seq_len`, in the PaLM/nanoGPT convention:
        6 per weight of every matmul (all but the embedding lookup) plus 12 * layers * heads *
        head_dim * seq_len for attention scores and values, counting the causal half as computed."""
        c = self.config
        matmul_weights = self.num_params() - self.tok_embeddings.weight.numel()
        return 6 * matmul_weights + 12 * c.n_layers * c.n_heads * c.head_dim * seq_len
