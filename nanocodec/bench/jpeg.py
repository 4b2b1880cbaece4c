"""Encode throughput of nanocodec.jpeg.encode against a bare Pillow save of the same images.

The ratio is the cost of our wrapper (mode conversion, crop, resize check, abbreviated save); the
images are real 256x256 frames from the demo footage, already at size, as data preparation sees
them after the demo renderer.
"""
from __future__ import annotations

import argparse
import io
import time

from nanocodec import demo, jpeg


def _best_rate(fn, images, repeats: int) -> float:
    """Images per second of the fastest of `repeats` passes (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for im in images:
            fn(im)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def _bare_pillow(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1)
    return buf.getvalue()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench jpeg")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    images = list(demo.render_images(demo.image_crops(args.images, seed=0), 256))
    ours = _best_rate(jpeg.encode, images, args.repeats)
    pillow = _best_rate(_bare_pillow, images, args.repeats)
    mean_bytes = sum(len(jpeg.encode(im)) for im in images) / len(images)
    print(f"{len(images)} real 256x256 images, q25 4:2:0, mean {mean_bytes:.0f} bytes per stream")
    print(f"nanocodec.jpeg.encode : {ours:8.1f} images/s")
    print(f"bare Pillow save      : {pillow:8.1f} images/s")
    print(f"ratio ours / Pillow   : {ours / pillow:8.3f}  (goal >= 0.9)")
