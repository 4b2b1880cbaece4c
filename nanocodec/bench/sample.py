"""Sampling speed with the KV cache against recomputing the whole prefix at every step.

    python -m nanocodec.bench sample [--tokens 1024] [--preset tiny] [--batch 1] [--device cpu] [--threads N]

Both runs generate the same number of tokens from BOS with the same randomly initialised model
(EOS banned so neither stops early), through `nanocodec.sampling.generate` with `use_cache` on and
off. Prints tokens/s of each and the ratio (goal: >= 10x at 1K tokens on CPU).
"""
from __future__ import annotations

import argparse

import torch

from nanocodec.bench._timing import add_torch_options, apply_torch_options
from nanocodec.model import Llama, ModelConfig
from nanocodec.sampling import generate

VOCAB = 579  # the paper's JPEG vocabulary: 256 bytes + 320 merges + 3 specials
BOS, EOS, PAD = 576, 577, 578


def run(model: Llama, batch: int, tokens: int, use_cache: bool) -> float:
    out = generate(model, [[BOS]] * batch, max_new_tokens=tokens, eos_id=EOS, pad_id=PAD, banned=(BOS, EOS, PAD),
                   temperature=1.0, top_k=40, top_p=0.9, generator=torch.Generator().manual_seed(0),
                   use_cache=use_cache, progress=True)
    assert out.new_tokens == batch * tokens, "a run stopped early"
    return out.tokens_per_second


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench sample", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    add_torch_options(parser)
    args = parser.parse_args(argv)
    device = apply_torch_options(args)
    torch.manual_seed(0)
    config = ModelConfig.preset(args.preset, vocab_size=VOCAB, max_seq_len=args.tokens + 1)
    model = Llama(config).to(device).eval()
    print(f"model: {args.preset} ({model.num_params() / 1e6:.2f}M params), {args.tokens} new tokens from BOS, "
          f"batch {args.batch}, {device}, {torch.get_num_threads()} threads")
    run(model, args.batch, 16, True)  # warm-up: allocator, kernel selection
    cached = run(model, args.batch, args.tokens, True)
    full = run(model, args.batch, args.tokens, False)
    print(f"KV cache:          {cached:9.1f} tokens/s")
    print(f"full recompute:    {full:9.1f} tokens/s  (baseline)")
    print(f"ratio cache/full:  {cached / full:9.1f}x  (goal >= 10x at 1K tokens on CPU)")
