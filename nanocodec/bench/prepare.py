"""Benchmark data preparation: 256x256 JPEG images per second per core, end to end vs encode-only.

`python -m nanocodec.bench prepare [--images 300] [--source-size 384] [--repeats 3] [--workers 0]`

Corpus: --images demo crops (real footage, nanocodec.demo) of --source-size px saved as q90 JPEG
files, like a folder of photos. In one run, best of --repeats, all in one process:
- baseline, encode only: `jpeg.encode(path, size=256, quality=25)` over every file;
- end to end: `prepare(kind="jpeg", source=FOLDER, workers=1, tokenizer=...)`: listing, encoding,
  BPE tokenizing (320 merges, learned beforehand on the same corpus and not timed), writing shards
  and the manifest.
It prints images/s per core for both and their time ratio (goal: <= 1.30, tokenizing and writing
cost at most 30% more than encoding), the tokenizer's share measured alone, and with --workers N
also the pool's images/s per core. Owns no library code.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

from nanocodec import bpe, demo, jpeg
from nanocodec.prepare import prepare

SIZE, QUALITY, MERGES = 256, 25, 320


def write_corpus(folder: Path, count: int, source_size: int, seed: int) -> list[Path]:
    paths = []
    for i, picture in enumerate(demo.render_images(demo.image_crops(count, seed), source_size)):
        paths.append(folder / f"img_{i:05d}.jpg")
        picture.save(paths[-1], "JPEG", quality=90)
    return paths


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    """Fastest wall time of each function; repeats interleave them so all see the same machine load."""
    times = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--source-size", type=int, default=384, help="side of the source JPEG files")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="also time a pool of N processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = write_corpus(tmp / "images", args.images, args.source_size, args.seed)
        streams = [jpeg.encode(p, size=SIZE, quality=QUALITY) for p in paths]
        tokenizer = bpe.train(streams, MERGES, split="jpeg")
        tokenizer.save(tmp / "tokenizer.json")
        n = len(paths)
        print(f"corpus: {n} q90 JPEG files of {args.source_size}x{args.source_size} px -> {SIZE}x{SIZE} q{QUALITY}, "
              f"{sum(map(len, streams)) / n:.0f} codec bytes/image; tokenizer {MERGES} merges")

        runs = iter(range(10**6))

        def end_to_end(workers: int) -> None:
            prepare("jpeg", str(tmp / "images"), tmp / f"out_{next(runs)}", size=SIZE, quality=QUALITY,
                    tokenizer=tmp / "tokenizer.json", workers=workers)

        fns = {
            "encode": lambda: [jpeg.encode(p, size=SIZE, quality=QUALITY) for p in paths],
            "tokenize": lambda: tokenizer.encode_batch(streams, bos=True, eos=True),
            "prepare": lambda: end_to_end(1),
        }
        if args.workers > 1:
            fns["pool"] = lambda: end_to_end(args.workers)
        with contextlib.redirect_stderr(io.StringIO()):  # prepare's progress bars and summaries
            t = best_times(fns, args.repeats)
        print(f"encode only (baseline)   {n / t['encode']:8.1f} images/s per core")
        print(f"prepare end to end       {n / t['prepare']:8.1f} images/s per core")
        print(f"  tokenizing alone       {n / t['tokenize']:8.1f} images/s "
              f"({t['tokenize'] / t['encode']:.0%} of encode time)")
        print(f"ratio prepare / encode   {t['prepare'] / t['encode']:8.2f}x time   (goal <= 1.30)")
        if args.workers > 1:
            print(f"prepare, {args.workers} workers     {n / t['pool']:8.1f} images/s, "
                  f"{n / t['pool'] / args.workers:.1f} per core ({os.cpu_count()} cores on this machine)")
