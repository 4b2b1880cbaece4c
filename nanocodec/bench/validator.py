"""Speed of nanocodec.huffman: whole-stream validation against Pillow decoding, and sampler feeds.

Streams are the model's format (real 256x256 demo frames, q25 4:2:0, abbreviated, a RST after every
MCU). Validation is compared with Pillow fully decoding the same images with their tables restored,
in the same run and process (one core). The sampler figure is the mean cost of `clone()` plus
`feed()` of one 1-4 byte token at a random point of the scan, for the stream's own next bytes (the
usual, viable case) and for random bytes (mostly rejected).
"""
from __future__ import annotations

import argparse
import io
import random
import time

from PIL import Image

from nanocodec import demo, huffman, jpeg
from nanocodec.bench._timing import best_time, clone_feed_cost


def _pillow_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


def _feed_cost(streams: list[bytes], trials: int, own: bool, rng: random.Random) -> float:
    """Mean microseconds of clone() + feed(token) from validators parked inside the scan."""
    cases = []
    for _ in range(trials):
        data = rng.choice(streams)
        start = jpeg.frame_info(data).scan_start
        cut = rng.randrange(start, len(data) - 4)
        parked = huffman.Validator()
        parked.feed(data[:cut])
        size = rng.randint(1, 4)
        token = data[cut:cut + size] if own else bytes(rng.randrange(256) for _ in range(size))
        cases.append((parked, token))
    return clone_feed_cost(cases)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench validator")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--feeds", type=int, default=5000)
    args = parser.parse_args(argv)
    images = list(demo.render_images(demo.image_crops(args.images, seed=0), 256))
    streams = [jpeg.encode(im) for im in images]
    restored = [jpeg.restore(data) for data in streams]
    start = time.perf_counter()
    bad = [r for r in map(huffman.validate, streams + restored) if not r.ok]
    warm = time.perf_counter() - start
    if bad:
        raise SystemExit(f"validator rejected {len(bad)} of our own streams, first: {bad[0]}")
    ours = best_time(lambda: [huffman.validate(s) for s in streams], args.repeats)[0]
    full = best_time(lambda: [huffman.validate(s) for s in restored], args.repeats)[0]
    pillow = best_time(lambda: [_pillow_decode(s) for s in restored], args.repeats)[0]
    megabytes = sum(map(len, streams)) / 1e6
    n = len(streams)
    rng = random.Random(0)
    own = _feed_cost(streams, args.feeds, True, rng)
    noise = _feed_cost(streams, args.feeds, False, rng)
    print(f"{n} real 256x256 images, q25 4:2:0, RST every MCU, mean {megabytes * 1e6 / n:.0f} bytes"
          f" per abbreviated stream; first pass incl. table setup {warm:.2f} s")
    print(f"huffman.validate (abbreviated) : {n / ours:8.1f} images/s {megabytes / ours:6.2f} MB/s"
          "  (goal >= 300 images/s)")
    print(f"huffman.validate (restored)    : {n / full:8.1f} images/s")
    print(f"Pillow decode (restored)       : {n / pillow:8.1f} images/s")
    print(f"ratio validate / Pillow decode : {pillow / ours:8.3f}")
    print(f"clone()+feed(1-4 byte token)   : {own:8.1f} us for the stream's next bytes, "
          f"{noise:.1f} us for random bytes  (goal <= 20 us)")
