"""Per-token cost of `nanocodec.hf.JpegLogitsProcessor` inside transformers' `generate`.

    python -m nanocodec.bench hf [--tokens 300] [--vocabs 579,32000] [--threads N]

For each vocabulary size, a random 2-layer Llama (transformers) of that vocabulary generates with
the paper's sampling (top-k 40, top-p 0.9), once plainly (EOS suppressed, `--tokens` new tokens)
and once with the processor keeping the stream a valid 64x64 JPEG (until it is complete, at most
`--tokens`), in two settings: prompted with the headers through SOS (the processor constrains the
scan, as in prompted completion), and unconditional from BOS with the headers pinned (a random
model almost never samples the pinned bytes, so nearly the whole vocabulary is refused at each
header step: the worst case). The tokenizer is byte-level BPE with random merges up to the
vocabulary size (the 32K case is synthetic: a large vocabulary of multi-byte tokens). Prints
milliseconds per token of each (the fastest of `--repeats` seeded runs), the processor's overhead
per token and the ratio.
"""
from __future__ import annotations

import argparse
import random

import torch

from nanocodec.bench._timing import best_time


def _tokenizer(vocab: int, streams: list[bytes], seed: int = 0):
    """Byte-level BPE of `vocab` ids whose merges spell substrings of real JPEG streams: at a random
    place of a random stream, the longest token there grows by the next byte."""
    from nanocodec.bpe import Tokenizer

    rng = random.Random(seed)
    ids = {bytes([b]): b for b in range(256)}
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab - 256 - 3:
        data = rng.choice(streams)
        start = rng.randrange(len(data) - 1)
        end = start + 1
        while end < len(data) and data[start : end + 1] in ids:
            end += 1
        if end < len(data):
            ids[data[start : end + 1]] = 256 + len(merges)
            merges.append((ids[data[start:end]], data[end]))
    return Tokenizer(merges, split="jpeg")


def _model(vocab: int, tokens: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=tokens + 1024)
    return LlamaForCausalLM(config).eval()


def _run(model, prompt: list[int], eos: int, pad: int, tokens: int, processor=None) -> tuple[int, list[int]]:
    torch.manual_seed(1)
    kwargs = dict(do_sample=True, top_k=40, top_p=0.9, max_new_tokens=tokens, pad_token_id=pad, eos_token_id=eos)
    if processor is None:
        kwargs["suppress_tokens"] = [eos]
    else:
        kwargs["logits_processor"] = [processor]
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), **kwargs)
    return out.shape[1] - len(prompt), out[0].tolist()


def main(argv: list[str]) -> None:
    from nanocodec import demo, huffman, jpeg
    from nanocodec.hf import JpegLogitsProcessor
    from nanocodec.codecs import JPEG

    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench hf", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--vocabs", default="579,32000")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the fastest counts")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = JPEG(size=64).header()
    streams = [jpeg.encode(im, size=64) for im in demo.render_images(demo.image_crops(64, seed=0), 64)]
    print(f"{args.tokens} tokens at most from BOS, batch 1, CPU, {torch.get_num_threads()} threads")
    for vocab in (int(v) for v in args.vocabs.split(",")):
        tokenizer = _tokenizer(vocab, streams)
        model = _model(tokenizer.vocab_size, args.tokens)
        eos, pad = tokenizer.eos_id, tokenizer.pad_id
        for name, prefix in (("prompted with the headers", header), ("unconditional, headers pinned", b"")):
            prompt = tokenizer.encode(prefix, bos=True)
            _run(model, prompt, eos, pad, 8)  # warm-up
            plain_s, (plain_n, _) = best_time(lambda: _run(model, prompt, eos, pad, args.tokens), args.repeats)
            procs = []  # a processor holds its rows' streams: a fresh one per run

            def constrained() -> tuple[int, list[int]]:
                procs.append(JpegLogitsProcessor(tokenizer, [prefix], header=header, top_k=40, top_p=0.9))
                return _run(model, prompt, eos, pad, args.tokens, procs[-1])

            constrained_s, (constrained_n, row) = best_time(constrained, args.repeats)
            proc = procs[-1]
            plain, constrained = plain_s / plain_n, constrained_s / constrained_n
            done = "complete and valid" if huffman.validate(proc.decode(row)).ok else "a valid prefix, cut at --tokens"
            print(f"vocab {tokenizer.vocab_size:6d}, {name}: plain generate {plain * 1e3:6.2f} ms/token (baseline, "
                  f"{plain_n} tokens); with JpegLogitsProcessor {constrained * 1e3:6.2f} ms/token ({constrained_n} tokens, "
                  f"{done}); overhead {(constrained - plain) * 1e3:6.2f} ms/token, ratio {constrained / plain:4.2f}x")
