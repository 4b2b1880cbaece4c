"""Per-GPU training memory plan: `python -m nanocodec.bench memory --preset=7b --context=12288
--gpus=32 [--batch=1] [--fsdp] [--activation_checkpointing] [--all]`.

Computed, not measured: the bytes train.py holds per GPU for one training step of a preset, split
into parameters, gradients, optimizer state, working weights, activations and logits, and whether
that fits on the 40/80 GB A100 and the 80/141 GB H100/H200 (with 10% kept back for the CUDA
context, NCCL buffers and fragmentation). --all prints the table for 1b and 7b at 12K and 32K.

The training setup it models is train.py's: fp32 master weights, bf16 autocast, AdamW (two fp32
moments), the Triton kernels (RMSNorm saves its input and 1/rms; attention saves q, k, v, o and
the log-sum-exp, never the T x T scores), fp32 logits.
  DDP:  full fp32 parameters and gradients, DDP's gradient buckets (another fp32 copy), AdamW state,
        and autocast's bf16 copy of every weight (saved for the backward).
  FSDP: parameters, gradients and AdamW state sharded over the GPUs; per block a bf16 all-gather
        (two in flight with prefetch) and its unsharded fp32 gradient before the reduce-scatter.
Activations per layer and token are counted tensor by tensor in `activation_bytes_per_token`
(tests/test_memory_plan.py checks that count against the bytes autograd really saves in small CPU
runs); with --activation_checkpointing only each block's input is kept, plus one block's
activations while it is recomputed.

Owns the arithmetic only; the model is nanocodec.model, the training loop train.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from nanocodec.model import ModelConfig

GiB = 2**30
GPUS = {"A100 40GB": 40e9, "A100 80GB": 80e9, "H100 80GB": 80e9, "H200 141GB": 141e9}
HEADROOM = 0.9  # share of a GPU's memory a training step may plan for


def parameter_counts(c: ModelConfig) -> tuple[int, int]:
    """(all parameters, parameters of one block)."""
    attn = c.dim * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.dim
    block = attn + 3 * c.dim * c.hidden_dim + 2 * c.dim
    return 2 * c.vocab_size * c.dim + c.n_layers * block + c.dim, block


def activation_bytes_per_token(c: ModelConfig, autocast: bool = True) -> int:
    """Bytes one block saves for its backward, per token (batch x context tokens in a step).

    The residual stream is fp32; matmuls run in bf16 under autocast (every linear saves its own
    bf16 copy of its input) and in fp32 without it (a linear saves the tensor it was given).
    """
    r, a = 4, 2 if autocast else 4  # residual stream, matmul activations
    d, h, hd = c.dim, c.hidden_dim, c.head_dim
    qkv = (c.n_heads + 2 * c.n_kv_heads) * hd  # wqkv's output: v is a view of it, so it all stays
    attention = (r * d + 4  # RMSNorm: its input and 1/rms per row
                 + a * d  # wqkv's input
                 + a * qkv  # q, k, v (v keeps the whole projection alive)
                 + a * (c.n_heads + c.n_kv_heads) * hd  # rotated q and k
                 + a * c.n_heads * hd + 4 * c.n_heads  # o and the log-sum-exp
                 + a * c.n_heads * hd)  # o transposed to (B, T, H * D) for wo
    ffn_inputs = 2 * a * d if autocast else r * d  # w1 and w3: one bf16 cast each, or the shared fp32 input
    ffn = r * d + 4 + ffn_inputs + 4 * a * h  # w1 out, silu out, w3 out, their product
    return attention + ffn


def logits_bytes_per_token(c: ModelConfig, autocast: bool = True) -> int:
    """The output head's bf16 logits, their fp32 copy, cross-entropy's saved log-softmax, and the
    fp32 gradient flowing back, plus the final RMSNorm's input and the head's input."""
    return c.vocab_size * ((2 if autocast else 0) + 4 + 4 + 4) + 4 * c.dim + (2 if autocast else 4) * c.dim


@dataclass
class Plan:
    preset: str
    context: int
    batch: int
    gpus: int
    fsdp: bool
    activation_checkpointing: bool
    parts: dict[str, float]  # name -> bytes per GPU

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def fits(self, capacity: float) -> bool:
        return self.total <= HEADROOM * capacity


def plan(preset: str, context: int, gpus: int, batch: int = 1, fsdp: bool = False,
         activation_checkpointing: bool = False) -> Plan:
    c = ModelConfig.preset(preset, max_seq_len=context)
    n, block = parameter_counts(c)
    tokens = batch * context
    shard = gpus if fsdp else 1
    parts = {"parameters (fp32)": 4 * n / shard, "gradients (fp32)": 4 * n / shard,
             "optimizer (AdamW, fp32)": 8 * n / shard}
    if fsdp:
        parts["working weights (2 gathered bf16 blocks + 1 unsharded fp32 grad)"] = (2 * 2 + 4) * block
    else:
        parts["working weights (DDP buckets + bf16 autocast copies)"] = (4 if gpus > 1 else 0) * n + 2 * n
    per_layer = activation_bytes_per_token(c) * tokens
    if activation_checkpointing:
        parts["activations (block inputs + 1 recomputed block)"] = c.n_layers * 4 * c.dim * tokens + per_layer
    else:
        parts["activations"] = c.n_layers * per_layer
    parts["logits and loss"] = logits_bytes_per_token(c) * tokens
    return Plan(preset, context, batch, gpus, fsdp, activation_checkpointing, parts)


def describe(p: Plan) -> str:
    mode = ("FSDP" if p.fsdp else "DDP") + (" + activation checkpointing" if p.activation_checkpointing else "")
    lines = [f"{p.preset} @ context {p.context}, batch {p.batch} per GPU, {p.gpus} GPUs, {mode}"]
    for name, b in p.parts.items():
        lines.append(f"  {name:<66} {b / GiB:8.2f} GiB")
    lines.append(f"  {'total per GPU':<66} {p.total / GiB:8.2f} GiB")
    lines.append("  fits (90% of memory): " + ", ".join(f"{g} {'yes' if p.fits(cap) else 'NO'}" for g, cap in GPUS.items()))
    return "\n".join(lines)


def table(gpus: int) -> str:
    """Markdown: 1b and 7b at 12K and 32K, each training mode, GiB per GPU and what it fits."""
    rows = ["| preset | context | mode | GiB per GPU | " + " | ".join(GPUS) + " |",
            "|---|---|---|---|" + "---|" * len(GPUS)]
    for preset in ("1b", "7b"):
        for context in (12288, 32768):
            for fsdp in (False, True):
                for ac in (False, True):
                    p = plan(preset, context, gpus, fsdp=fsdp, activation_checkpointing=ac)
                    mode = ("FSDP" if fsdp else "DDP") + (" + AC" if ac else "")
                    rows.append(f"| {preset} | {context} | {mode} | {p.total / GiB:.1f} | "
                                + " | ".join("yes" if p.fits(cap) else "no" for cap in GPUS.values()) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="7b")
    parser.add_argument("--context", type=int, default=12288)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="sequences per GPU per micro-step")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument("--all", action="store_true", help="table of 1b/7b at 12K/32K in every mode")
    args = parser.parse_args([a.replace("--activation-checkpointing", "--activation_checkpointing") for a in argv])
    if args.gpus < 1 or args.batch < 1 or args.context < 1:
        raise SystemExit("nanocodec.bench memory: --gpus, --batch and --context must be positive")
    try:
        p = plan(args.preset, args.context, args.gpus, args.batch, args.fsdp, args.activation_checkpointing)
    except ValueError as e:
        raise SystemExit(f"nanocodec.bench memory: {e}")
    print(describe(p))
    if args.all:
        print()
        print(table(args.gpus))
