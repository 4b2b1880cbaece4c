"""Training throughput of our Llama against a minimal plain-PyTorch Llama of the same size.

`python -m nanocodec.bench train [--preset tiny] [--context 1024] [--batch 4] [--steps 3]
[--rounds 5] [--threads N] [--device cpu]` times full training steps (forward, backward, AdamW) of
nanocodec.model.Llama and of the plain PyTorch `PlainLlama` (nanocodec.reference), which holds the
same weights (same parameter names), computes the same function with nothing but torch ops and
F.scaled_dot_product_attention, and is checked to give the same logits before any timing. The two
alternate in rounds (ABBA order) so that load on a shared machine hits both alike; the ratio is
taken between the best rounds (as timeit does: the fastest round is the least disturbed one), with
the medians beside it (goal >= 0.95: our structure and the kernel dispatch add no overhead).
Owns the timing; the model under test lives in nanocodec.model, the baseline in nanocodec.reference.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from nanocodec.bench._timing import add_torch_options, apply_torch_options
from nanocodec.model import Llama, ModelConfig
from nanocodec.reference import PlainLlama


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
