"""Encode throughput of nanocodec.jpeg.encode against a bare Pillow save of the same images.

The ratio is the cost of our wrapper (mode conversion, crop, resize check, abbreviated save); the
images are real 256x256 frames from the demo footage, already at size, as data preparation sees
them after the demo renderer.
"""
from __future__ import annotations

import argparse
import io

from nanocodec import demo, jpeg
from nanocodec.bench._timing import best_time


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
    seconds, streams = best_time(lambda: [jpeg.encode(im) for im in images], args.repeats)
    ours = len(images) / seconds
    pillow = len(images) / best_time(lambda: [_bare_pillow(im) for im in images], args.repeats)[0]
    mean_bytes = sum(map(len, streams)) / len(streams)
    print(f"{len(images)} real 256x256 images, q25 4:2:0, mean {mean_bytes:.0f} bytes per stream")
    print(f"nanocodec.jpeg.encode : {ours:8.1f} images/s")
    print(f"bare Pillow save      : {pillow:8.1f} images/s")
    print(f"ratio ours / Pillow   : {ours / pillow:8.3f}  (goal >= 0.9)")
