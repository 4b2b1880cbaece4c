"""The JPEG side of the codec layer: the exact byte streams JPEG-LM models, and their structure.

Owns: turning any image Pillow reads into the paper's abbreviated JPEG stream (square crop, resize,
Pillow `quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1`: no DQT/DHT, a RST
marker after every MCU), putting the tables back (`restore`) so ordinary decoders read it, decoding,
and the stream geometry that prompting needs (MCU count, restart offsets, `prompt` cut at an MCU).
Does not own: checking the entropy-coded data (nanocodec.huffman) or tokenization (nanocodec.bpe).
"""
from __future__ import annotations

import argparse
import functools
import io
import math
import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from nanocodec import huffman

ImageSource = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview]

SOI, EOI, SOS, DQT, DHT, DRI, APP0 = 0xD8, 0xD9, 0xDA, 0xDB, 0xC4, 0xDD, 0xE0
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
RST_MARKERS = frozenset(range(0xD0, 0xD8))
STANDALONE = RST_MARKERS | {SOI, EOI, 0x01}

# The paper's settings (appendix D), the defaults of every function here and of nanocodec.codecs.JPEG.
SIZE, QUALITY, SUBSAMPLING, RESTART_BLOCKS = 256, 25, "4:2:0", 1

# Square side that one MCU covers for each chroma subsampling Pillow writes.
MCU_SIDE = {"4:4:4": 8, "4:2:2": 16, "4:2:0": 16}


class ImageError(ValueError):
    """An input that cannot be read as an image: names the source and the cause."""


class InvalidJPEG(ValueError):
    """A JPEG stream that does not decode cleanly: names the problem and where it is."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"<{len(source)} bytes>"


def load_image(source: ImageSource) -> Image.Image:
    """Open and fully load an image; any failure becomes ImageError naming the source.

    Pillow's decompression-bomb warning is raised as an error: a folder of a million images must not
    stall on one 40000x40000 header.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        return source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, (bytes, bytearray, memoryview)):
                if len(source) == 0:
                    raise ImageError(f"{name}: empty input")
                im = Image.open(io.BytesIO(bytes(source)))
            else:
                if os.path.getsize(source) == 0:
                    raise ImageError(f"{name}: empty file")
                im = Image.open(source)
            im.load()
            return ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except Image.DecompressionBombWarning as e:
        raise ImageError(f"{name}: decompression bomb: {e}") from e
    except Exception as e:  # Pillow raises many types on malformed files; all mean "unreadable"
        raise ImageError(f"{name}: {type(e).__name__}: {e}") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB; transparency is composited on black.

    16-bit and 32-bit integer modes are scaled from 16-bit range; float images in [0, 1] are
    scaled to [0, 255], others clipped.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0
        a = np.nan_to_num(np.clip(np.rint(a), 0, 255)).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    has_alpha = im.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        black = Image.new("RGB", im.size, (0, 0, 0))
        black.paste(rgba, mask=rgba.getchannel("A"))
        return black
    return im.convert("RGB")


def square_crop(im: Image.Image, crop: str = "center", rng: random.Random | int | None = None) -> Image.Image:
    """The largest square inside the image, centered or at a random position."""
    w, h = im.size
    side = min(w, h)
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    if w == h:
        return im
    if crop == "center":
        left, top = (w - side) // 2, (h - side) // 2
    else:
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    return im.crop((left, top, left + side, top + side))


def encode(
    image: ImageSource,
    size: int = SIZE,
    quality: int = QUALITY,
    subsampling: str = SUBSAMPLING,
    restart_blocks: int = RESTART_BLOCKS,
    crop: str = "center",
    rng: random.Random | int | None = None,
) -> bytes:
    """The abbreviated JPEG stream of an image, exactly as JPEG-LM sees it (paper, appendix D)."""
    if subsampling not in MCU_SIDE:
        raise ValueError(f"subsampling must be one of {sorted(MCU_SIDE)}, got {subsampling!r}")
    if not isinstance(size, int) or size <= 0 or size % MCU_SIDE[subsampling]:
        raise ValueError(f"size must be a positive multiple of {MCU_SIDE[subsampling]} (the MCU side for {subsampling}), got {size!r}")
    if restart_blocks < 0:
        raise ValueError(f"restart_blocks must be >= 0, got {restart_blocks}")
    im = load_image(image)
    if im.size[0] == 0 or im.size[1] == 0:
        raise ImageError(f"{_describe(image)}: image has no pixels ({im.size[0]}x{im.size[1]})")
    try:
        im = square_crop(to_rgb(im), crop, rng)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
    except (ValueError, OSError) as e:
        raise ImageError(f"{_describe(image)}: {e}") from e
    return save_abbreviated(im, quality, subsampling, restart_blocks)


def save_abbreviated(im: Image.Image, quality: int = QUALITY, subsampling: str = SUBSAMPLING, restart_blocks: int = RESTART_BLOCKS) -> bytes:
    """Pillow's abbreviated stream of these exact pixels (no resizing, no conversion)."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, subsampling=subsampling, streamtype=2, restart_marker_blocks=restart_blocks)
    return buf.getvalue()


@dataclass(frozen=True)
class Segment:
    """One marker segment before the scan data: `start` is the offset of its FF byte."""

    marker: int
    start: int
    end: int


def header_segments(data: bytes) -> tuple[list[Segment], int]:
    """The marker segments from SOI through SOS, and the offset where the entropy-coded data starts."""
    if data[:2] != b"\xff\xd8":
        raise InvalidJPEG(f"stream does not start with SOI (FF D8), found {data[:2].hex(' ') or 'nothing'}")
    segments, pos = [Segment(SOI, 0, 2)], 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise InvalidJPEG(f"expected a marker at byte {pos}, found {data[pos]:02X}")
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 1 >= len(data):
            break
        marker = data[pos + 1]
        if marker in STANDALONE:
            segments.append(Segment(marker, pos, pos + 2))
            pos += 2
            continue
        if pos + 4 > len(data):
            break
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > len(data):
            raise InvalidJPEG(f"segment {marker:02X} at byte {pos} runs past the end of the stream")
        segments.append(Segment(marker, pos, end))
        pos = end
        if marker == SOS:
            return segments, pos
    raise InvalidJPEG(f"stream ends at byte {len(data)} before the start of scan (SOS)")


@dataclass(frozen=True)
class FrameInfo:
    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]  # (h, v) per component
    restart_interval: int
    scan_start: int


def frame_info(data: bytes) -> FrameInfo:
    """Size, sampling factors, restart interval and scan offset of a (possibly abbreviated) stream."""
    segments, scan_start = header_segments(data)
    sof = next((s for s in segments if s.marker in SOF_MARKERS), None)
    if sof is None:
        raise InvalidJPEG("no frame header (SOF) before the scan")
    body = data[sof.start + 4 : sof.end]
    if len(body) < 6:
        raise InvalidJPEG(f"frame header at byte {sof.start} is too short")
    height, width, ncomp = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
    comps = body[6 : 6 + 3 * ncomp]
    if ncomp == 0 or len(comps) < 3 * ncomp:
        raise InvalidJPEG(f"frame header at byte {sof.start} declares {ncomp} components it does not hold")
    sampling = tuple((comps[3 * i + 1] >> 4, comps[3 * i + 1] & 15) for i in range(ncomp))
    dri = next((s for s in segments if s.marker == DRI), None)
    interval = int.from_bytes(data[dri.start + 4 : dri.start + 6], "big") if dri else 0
    return FrameInfo(width, height, sampling, interval, scan_start)


def mcu_count(data: bytes) -> int:
    """Number of MCUs in the (single, interleaved or one-component) scan of a baseline stream."""
    info = frame_info(data)
    if len(info.sampling) == 1:
        return math.ceil(info.width / 8) * math.ceil(info.height / 8)
    hmax = max(h for h, _ in info.sampling)
    vmax = max(v for _, v in info.sampling)
    if hmax == 0 or vmax == 0:
        raise InvalidJPEG("frame header has a zero sampling factor")
    return math.ceil(info.width / (8 * hmax)) * math.ceil(info.height / (8 * vmax))


def restart_offsets(data: bytes) -> list[int]:
    """Byte offsets where each restart interval starts: just after SOS, then just after each RST."""
    pos = frame_info(data).scan_start
    offsets = [pos]
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return offsets
        nxt = data[pos + 1]
        if nxt in RST_MARKERS:
            offsets.append(pos + 2)
        elif nxt not in (0x00, 0xFF):
            return offsets  # EOI or another marker ends the scan
        pos += 1 if nxt == 0xFF else 2


def prompt(data: bytes, ratio: float) -> bytes:
    """The prefix of a stream holding exactly floor(ratio * mcu_count) whole MCUs.

    The cut falls right after the RST marker that ends the last kept MCU, so the prompt's tokens
    are a prefix of the whole stream's. Ratio 0 gives the headers through SOS; ratio 1 the whole
    stream. With a restart interval of R > 1 MCUs the cut can only fall every R MCUs: the prompt
    then holds the largest whole number of intervals not above the requested count.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    info = frame_info(data)
    if info.restart_interval == 0:
        raise ValueError("stream has no restart markers (no DRI segment): it cannot be cut at an MCU")
    total = mcu_count(data)
    keep = math.floor(ratio * total)
    if keep >= total:
        return bytes(data)
    offsets = restart_offsets(data)
    interval = keep // info.restart_interval
    if interval >= len(offsets):
        raise InvalidJPEG(f"stream holds only {len(offsets) - 1} restart markers, fewer than the {interval} a {ratio} prompt needs")
    return bytes(data[: offsets[interval]])


@functools.lru_cache(maxsize=32)
def _table_segments(quality: int, subsampling: str) -> tuple[bytes, bytes]:
    """(DQT segments, DHT segments) that Pillow writes for these settings, from a tables-only stream."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", quality=quality, subsampling=subsampling, streamtype=1)
    data = buf.getvalue()
    dqt, dht, pos = bytearray(), bytearray(), 2
    while data[pos + 1] != EOI:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        (dqt if data[pos + 1] == DQT else dht).extend(data[pos:end])
        pos = end
    return bytes(dqt), bytes(dht)


def tables(quality: int = QUALITY, subsampling: str = SUBSAMPLING) -> bytes:
    """The DQT and DHT segments an abbreviated stream with these settings leaves out."""
    dqt, dht = _table_segments(quality, subsampling)
    return dqt + dht


def restore(data: bytes, quality: int = QUALITY, subsampling: str = SUBSAMPLING) -> bytes:
    """A complete JFIF stream: DQT inserted after APP0 (or SOI), DHT after SOF.

    `restore(encode(img))` is byte-identical to Pillow saving the same pixels with streamtype=0.
    A stream that already carries tables is returned unchanged.
    """
    segments, _ = header_segments(data)
    if any(s.marker in (DQT, DHT) for s in segments):
        return bytes(data)
    sof = next((s for s in segments if s.marker in SOF_MARKERS), None)
    if sof is None:
        raise InvalidJPEG("no frame header (SOF) before the scan")
    app0 = next((s for s in segments if s.marker == APP0), segments[0])
    dqt, dht = _table_segments(quality, subsampling)
    return b"".join((data[: app0.end], dqt, data[app0.end : sof.end], dht, data[sof.end :]))


def decode(data: bytes, quality: int = QUALITY, subsampling: str = SUBSAMPLING, repair: bool = False) -> Image.Image:
    """Restore the tables, check the stream, decode to an RGB image.

    A broken stream raises InvalidJPEG naming the first error, or with `repair=True` is repaired
    first (nanocodec.huffman.repair: the valid restart intervals kept, the rest flat gray).
    """
    full = restore(data, quality, subsampling)
    report = huffman.validate(full)
    if not report.ok:
        if not repair:
            raise InvalidJPEG(f"invalid JPEG at byte {report.offset}: {report.error}")
        full = huffman.repair(full)
    try:
        im = Image.open(io.BytesIO(full))
        im.load()
    except Exception as e:
        raise InvalidJPEG(f"Pillow could not decode the stream: {e}") from e
    return im.convert("RGB")


def _cmd_encode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(args.inputs, unit="img", disable=len(args.inputs) < 50):
        try:
            data = encode(path, size=args.size, quality=args.quality)
        except ImageError as e:
            failed += 1
            print(f"skipped {e}", file=sys.stderr)
            continue
        if args.restore:
            data = restore(data, args.quality)
        (out / (Path(path).stem + ".jpg")).write_bytes(data)
    print(f"encoded {len(args.inputs) - failed} of {len(args.inputs)} images to {out}" + (f" ({failed} skipped)" if failed else ""))
    return 1 if failed else 0


def _cmd_restore(args: argparse.Namespace) -> int:
    data = Path(args.input).read_bytes()
    try:
        Path(args.out).write_bytes(restore(data, args.quality))
    except InvalidJPEG as e:
        print(f"{args.input}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.jpeg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="encode images to the abbreviated streams the model sees")
    enc.add_argument("inputs", nargs="+")
    enc.add_argument("-o", "--out", required=True, help="output folder (one .jpg per input)")
    enc.add_argument("--size", type=int, default=SIZE)
    enc.add_argument("--quality", type=int, default=QUALITY)
    enc.add_argument("--restore", action="store_true", help="write complete files any viewer opens")
    enc.set_defaults(run=_cmd_encode)
    res = sub.add_parser("restore", help="put the tables back into an abbreviated stream")
    res.add_argument("input")
    res.add_argument("-o", "--out", required=True)
    res.add_argument("--quality", type=int, default=QUALITY)
    res.set_defaults(run=_cmd_restore)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
