"""Training throughput of our Llama against a minimal plain-PyTorch Llama of the same size.

`python -m nanocodec.bench train [--preset tiny] [--context 1024] [--batch 4] [--steps 3]
[--rounds 5] [--threads N] [--device cpu]` times full training steps (forward, backward, AdamW) of
nanocodec.model.Llama and of `PlainLlama` below, which holds the same weights (same parameter
names), computes the same function with nothing but torch ops and F.scaled_dot_product_attention,
and is checked to give the same logits before any timing. The two alternate in rounds (ABBA order)
so that load on a shared machine hits both alike; the ratio is taken between the best rounds (as
timeit does: the fastest round is the least disturbed one), with the medians beside it (goal
>= 0.95: our structure and the kernel dispatch add no overhead).
Owns the baseline model and the timing; the model under test lives in nanocodec.model.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanocodec.bench._timing import add_torch_options, apply_torch_options
from nanocodec.model import Llama, ModelConfig, rope_tables


class PlainBlock(nn.Module):
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
    """The baseline: Llama in plain PyTorch, parameter names identical to nanocodec.model.Llama."""

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


def tokens_per_second(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
    begin = time.perf_counter()
    for _ in range(steps):
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    return steps * x.numel() / (time.perf_counter() - begin)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    add_torch_options(parser)
    args = parser.parse_args(argv)
    device = apply_torch_options(args)

    torch.manual_seed(0)
    config = ModelConfig.preset(args.preset, max_seq_len=args.context)
    ours = Llama(config).to(device)
    plain = PlainLlama(config).to(device)
    plain.load_state_dict(ours.state_dict())
    x = torch.randint(0, config.vocab_size, (args.batch, args.context), device=device)
    with torch.no_grad():
        diff = (ours(x)[0] - plain(x)[0]).abs().max().item()
    if diff > 1e-3:
        raise SystemExit(f"the baseline does not compute our model's function (max logit difference {diff:.2e})")
    models = {"nanocodec Llama": ours, "plain PyTorch Llama (SDPA)": plain}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    for name, m in models.items():  # warm-up: allocator, thread pools, optimizer state
        tokens_per_second(m, optimizers[name], x, 1)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.rounds):
        order = list(models) if round_ % 2 == 0 else list(models)[::-1]  # ABBA: drifting load favours neither
        for name in order:
            rates[name].append(tokens_per_second(models[name], optimizers[name], x, args.steps))
    print(f"training step (fwd+bwd+AdamW), preset {args.preset} ({ours.num_params() / 1e6:.2f}M params), "
          f"batch {args.batch} x context {args.context}, {device}, {torch.get_num_threads()} threads, "
          f"{args.rounds} alternating rounds of {args.steps} steps; logits agree to {diff:.1e}")
    for name, r in rates.items():
        print(f"  {name:<28} best {max(r):>8.0f} tokens/s   median {statistics.median(r):>8.0f}   "
              f"(rounds: {', '.join(f'{v:.0f}' for v in r)})")
    ours, plain = rates["nanocodec Llama"], rates["plain PyTorch Llama (SDPA)"]
    print(f"ratio ours / plain: {max(ours) / max(plain):.3f} best, {statistics.median(ours) / statistics.median(plain):.3f} "
          f"median (goal >= 0.95)")
