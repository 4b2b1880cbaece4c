"""H.264 (AVC) Annex-B streams for AVC-LM: encode with the paper's libx264 settings, parse, cut, decode.

Owns: turning a video file or a list of frames into the paper's byte stream (appendix D: 3 fps by
presentation time, first 5 s, scaled into 256x144 with black bars, yuv420p, libx264 baseline at
constant QP 37 with one macroblock per slice), cutting prompts at picture boundaries, decoding every
frame FFmpeg can produce, strict validation through FFmpeg, and PNG filmstrips. The stream syntax
(NAL units, parameter sets, slice headers, x264's SEI) lives in nanocodec.h264.syntax; its names
are re-exported here. One deliberate deviation: `keep_sei=False` (the default)
drops x264's user-data SEI, ~550 bytes of encoder version and settings text that hold no picture.
Does not own tokenisation (`nanocodec.bpe`), datasets (`nanocodec.prepare`) or sampling.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, Union

import av
import av.logging
import numpy as np
from av.video.reformatter import ColorRange
from PIL import Image

from nanocodec.h264.syntax import (  # noqa: F401 (re-exported: callers read the syntax through avc)
    ACCESS_UNIT_PREFIX_TYPES, SLICE_TYPES, VCL_TYPES, X264_SEI_UUID, Nal, Pps, Slice, Sps, VideoError,
    _picture_starts, frame_offsets, nal_units, parameter_sets, slice_headers, strip_x264_sei,
    x264_settings)
from nanocodec.pictures import tile

Source = Union[str, os.PathLike, Sequence[Union[np.ndarray, Image.Image]]]

# The paper's ffmpeg flags, under the same names libavcodec gives them (generic or libx264-private).
# A misspelt name would be ignored silently, so tests check each name against the codec's option
# list and each value against the settings text x264 writes into its SEI.
PAPER_X264_OPTIONS = {
    "profile": "baseline",
    "bf": "0",
    "x264opts": "slice-max-mbs=1",
    "trellis": "0",
    "me_method": "dia",
    "threads": "1",
    "subq": "0",
    "psy": "0",
    "mixed-refs": "0",
    "fast-pskip": "0",
    "partitions": "none",
    "refs": "3",
}
STRICT_ERR_DETECT = "crccheck+bitstream+buffer+explode"
_TAGGED_RANGES = (ColorRange.MPEG.value, ColorRange.JPEG.value)
MAX_DECODE_PIXELS = 8192 * 4320  # bounds what a corrupt SPS can make the decoder allocate


class Report(NamedTuple):
    ok: bool
    frames: int         # pictures decoded cleanly before the first problem
    offset: int         # where the first bad picture starts; len(data) when ok
    error: str | None


def prompt(data: bytes, frames: int) -> bytes:
    """The stream cut before picture `frames`: headers (SPS, PPS, ...) plus exactly `frames` pictures.

    Parameter sets or SEI that x264 repeats in front of a later IDR picture belong to that picture,
    so they are cut with it.
    """
    data = bytes(data)
    nals = nal_units(data)
    starts = _picture_starts(data, nals)
    if not 0 <= frames <= len(starts):
        raise ValueError(f"prompt: asked for {frames} frames of a stream with {len(starts)} pictures")
    if frames == len(starts):
        return data
    first = starts[frames]
    if frames > 0:
        while first - 1 > starts[frames - 1] and nals[first - 1].type in ACCESS_UNIT_PREFIX_TYPES:
            first -= 1
    return data[:nals[first].offset]


# ----------------------------------------------------------------------------- source -> frames

def _check_settings(seconds: float, fps: float, size: tuple[int, int], qp: int) -> None:
    if not (seconds > 0 and fps > 0):
        raise ValueError(f"encode: seconds ({seconds}) and fps ({fps}) must be positive")
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"encode: size {size} must be even and at least 16x16 for yuv420p")
    if not 0 <= qp <= 51:
        raise ValueError(f"encode: qp {qp} is outside H.264's 0..51")


def _file_frames(path: str, seconds: float, fps: float) -> tuple[list[av.VideoFrame], Fraction | None]:
    """The ffmpeg `fps` filter (round to nearest tick, last frame wins) limited to `seconds` like `-t`."""
    count = math.ceil(seconds * fps - 1e-9)
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: cannot open as video: {e}") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        sar = Fraction(stream.sample_aspect_ratio) if stream.sample_aspect_ratio else None
        chosen: list[av.VideoFrame] = []
        latest, t0, end = None, None, 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else index / rate
                t0 = t if t0 is None else t0
                tick = math.floor((t - t0) * fps + 0.5)
                while latest is not None and len(chosen) < min(tick, count):
                    chosen.append(latest)
                if len(chosen) >= count:
                    break
                latest = frame
                duration = float(frame.duration * frame.time_base) if frame.duration else 1 / rate
                end = t + duration
        except av.FFmpegError as e:
            raise VideoError(f"{path}: cannot decode video: {e}") from None
        if latest is None:
            raise VideoError(f"{path}: video stream has no decodable frames")
        end_tick = math.floor((end - t0) * fps + 0.5)
        while len(chosen) < min(max(end_tick, 1), count):
            chosen.append(latest)
    if sar and round(chosen[0].rotation / 90) % 2:
        sar = 1 / sar
    return [_upright(f) for f in chosen], sar


def _upright(frame: av.VideoFrame) -> av.VideoFrame:
    """Apply the container's display rotation, as ffmpeg's autorotate does (flips are ignored)."""
    turns = round(frame.rotation / 90) % 4
    if not turns:
        return frame
    # In 4:4:4 the planes turn without touching colour; the tags tell _letterbox how to convert.
    planes = np.rot90(frame.to_ndarray(format="yuv444p"), turns, axes=(1, 2))
    upright = av.VideoFrame.from_ndarray(np.ascontiguousarray(planes), format="yuv444p")
    upright.colorspace, upright.color_range = frame.colorspace, frame.color_range
    return upright


def _array_frames(frames: Sequence, count: int) -> list[av.VideoFrame]:
    out = []
    for i, frame in enumerate(frames[:count]):
        if isinstance(frame, Image.Image):
            frame = np.asarray(frame.convert("RGB"))
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
                and frame.shape[2] == 3 and frame.shape[0] > 0 and frame.shape[1] > 0):
            got = (f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray)
                   else type(frame).__name__)
            raise VideoError(f"frame {i}: expected an HxWx3 uint8 array or PIL image, got {got}")
        out.append(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
    return out


def fit_size(width: int, height: int, size: tuple[int, int] = (256, 144)) -> tuple[int, int]:
    """ffmpeg's `scale=W:H:force_original_aspect_ratio=decrease` (av_rescale rounds to nearest)."""
    out_w, out_h = size
    return (max(1, min(out_w, (out_h * width + height // 2) // height)),
            max(1, min(out_h, (out_w * height + width // 2) // width)))


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in frame.planes]


def _letterbox(frame: av.VideoFrame, size: tuple[int, int]) -> av.VideoFrame:
    """Scale into `size` (bicubic, ffmpeg's default) and pad with black, centred, in yuv420p."""
    out_w, out_h = size
    w, h = fit_size(frame.width, frame.height, size)
    src_range = frame.color_range if frame.color_range in _TAGGED_RANGES else None
    scaled = frame.reformat(w, h, "yuv420p", interpolation="BICUBIC",
                            src_color_range=src_range, dst_color_range="MPEG")
    # ffmpeg's pad rounds (ow-iw)/2 down to the chroma grid.
    x, y = ((out_w - w) // 2) & ~1, ((out_h - h) // 2) & ~1
    canvas = [np.full((out_h, out_w), 16, np.uint8),
              np.full((out_h // 2, out_w // 2), 128, np.uint8),
              np.full((out_h // 2, out_w // 2), 128, np.uint8)]
    for plane, (dst, src) in enumerate(zip(canvas, _planes(scaled))):
        shift = 1 if plane else 0
        dst[y >> shift:(y >> shift) + src.shape[0], x >> shift:(x >> shift) + src.shape[1]] = src
    # from_ndarray reads yuv420p as the three planes back to back, viewed as (3h/2, w) rows.
    packed = np.concatenate([plane.ravel() for plane in canvas]).reshape(-1, out_w)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p")


# ----------------------------------------------------------------------------- encode

class _Prepared(NamedTuple):
    frames: list[av.VideoFrame]        # yuv420p, letterboxed: what ffmpeg's filter chain hands x264
    colour: av.VideoFrame | None       # a source frame whose colour description x264 should tag
    sar: Fraction | None               # sample aspect ratio after scaling, for x264's VUI


def _prepare(source: Source, seconds: float, fps: float, size: tuple[int, int]) -> _Prepared:
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        raw, source_sar = _file_frames(name, seconds, fps)
        colour = raw[0]
    else:
        name, colour, source_sar = "frame sequence", None, None
        raw = _array_frames(source, math.ceil(seconds * fps - 1e-9))
    if not raw:
        raise VideoError(f"{name}: no frames to encode")
    sar = None
    if source_sar:  # like ffmpeg's scale: pixels keep their display shape through the rounding
        w, h = fit_size(raw[0].width, raw[0].height, size)
        sar = source_sar * Fraction(h * raw[0].width, w * raw[0].height)
    return _Prepared([_letterbox(f, size) for f in raw], colour, sar)


def _x264(prepared: _Prepared, fps: float, qp: int) -> bytes:
    frames, colour = prepared.frames, prepared.colour
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
    rate = Fraction(fps).limit_denominator(1001)
    ctx.time_base, ctx.framerate = 1 / rate, rate
    if colour is not None:  # ffmpeg hands the source's colour description on to x264's VUI
        ctx.colorspace, ctx.color_primaries, ctx.color_trc = (
            colour.colorspace, colour.color_primaries, colour.color_trc)
        if colour.color_range in _TAGGED_RANGES:
            ctx.color_range = ColorRange.MPEG.value  # _letterbox converted it to limited range
    if prepared.sar:
        ctx.sample_aspect_ratio = prepared.sar
    ctx.options = {**PAPER_X264_OPTIONS, "qp": str(qp)}
    return run_encoder(ctx, frames)


def run_encoder(ctx: av.CodecContext, frames: list[av.VideoFrame]) -> bytes:
    """Feed frames (numbered in order) through an opened-for-writing codec context, flush, join."""
    packets = []
    for pts, frame in enumerate(frames):
        frame.pts = pts
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


def encode(source: Source, *, seconds: float = 5, fps: float = 3, size: tuple[int, int] = (256, 144),
           qp: int = 37, keep_sei: bool = False) -> bytes:
    """The paper's H.264 Annex-B stream for a video file, or for frames already at `fps`.

    Raises VideoError when the source cannot be read or holds no frames.
    """
    _check_settings(seconds, fps, size, qp)
    data = _x264(_prepare(source, seconds, fps, size), fps, qp)
    return data if keep_sei else strip_x264_sei(data)


# ----------------------------------------------------------------------------- decode and check

def _decoder(strict: bool) -> av.CodecContext:
    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = 1  # errors then surface at the packet that caused them
    ctx.options = {"max_pixels": str(MAX_DECODE_PIXELS),
                   **({"err_detect": STRICT_ERR_DETECT} if strict else {})}
    return ctx


def _access_units(ctx: av.CodecContext, data: bytes) -> list[av.Packet]:
    """FFmpeg's own h264 parser splits the stream into pictures, as `ffmpeg -i x.h264` would."""
    return ctx.parse(data) + ctx.parse(None)


def decode(data: bytes) -> list[np.ndarray]:
    """Every frame FFmpeg's decoder (with its error concealment) produces, as HxWx3 uint8 RGB.

    Never raises on corrupt input: packets FFmpeg rejects are skipped, as the ffmpeg tool does.
    """
    ctx = _decoder(strict=False)
    frames: list[np.ndarray] = []
    try:
        packets: list[av.Packet | None] = [*_access_units(ctx, bytes(data)), None]
    except av.FFmpegError:
        return frames
    for packet in packets:  # the final None flushes the frame still held in the decoder
        try:
            frames += [f.to_ndarray(format="rgb24") for f in ctx.decode(packet)]
        except av.FFmpegError:
            continue
    return frames


def validate(data: bytes) -> Report:
    """Decode with FFmpeg's strict error detection and its error log captured.

    ok when every picture the slices announce (slices with first_mb_in_slice 0) decodes with no
    error logged, no packet rejected and no macroblock concealed. Never raises on corrupt input.
    """
    data = bytes(data)
    announced = len(frame_offsets(data))
    if not announced:
        return Report(False, 0, 0, "no coded picture (no slice with first_mb_in_slice 0)")
    previous_level, previous_skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    # PyAV drops a message equal to the one before it, so without this the second stream with the
    # same error as the first would log nothing and pass.
    av.logging.set_skip_repeated(False)
    try:
        with av.logging.Capture() as logs:
            return _strict_decode(data, announced, logs)
    finally:
        av.logging.set_level(previous_level)
        av.logging.set_skip_repeated(previous_skip)


def _strict_decode(data: bytes, announced: int, logs: list) -> Report:
    ctx = _decoder(strict=True)
    try:
        packets = _access_units(ctx, data)
    except av.FFmpegError as e:
        return Report(False, 0, 0, f"FFmpeg h264 parser: {e}")
    starts = [0, *itertools.accumulate(p.size for p in packets)]
    good = 0
    for index, packet in enumerate([*packets, None]):
        at = min(starts[min(index, len(packets))], len(data))
        try:
            frames = ctx.decode(packet)
        except av.FFmpegError as e:
            return Report(False, good, at, _log_text(logs) or str(e))
        if logs:
            return Report(False, good, at, _log_text(logs))
        for frame in frames:
            if frame.is_corrupt:
                return Report(False, good, at,
                              f"picture {good}: FFmpeg concealed missing or damaged macroblocks")
            good += 1
    if good != announced:
        return Report(False, good, starts[min(good, len(packets))],
                      f"decoded {good} of the {announced} pictures the slices announce")
    return Report(True, good, len(data), None)


def _log_text(logs: list) -> str:
    return "; ".join(f"[{name}] {message.strip()}" for _level, name, message in logs[:3])


def filmstrip(frames: Sequence[np.ndarray], path: str | os.PathLike, cols: int = 5) -> Image.Image:
    """Frames laid out left to right, top to bottom, `cols` per row, 2-pixel gaps; saved as PNG."""
    if not len(frames):
        raise ValueError(f"filmstrip: no frames to write to {os.fspath(path)}")
    sheet = tile([Image.fromarray(np.asarray(frame, np.uint8)) for frame in frames], cols, background=(40, 40, 40))
    sheet.save(path, format="PNG")
    return sheet


# ----------------------------------------------------------------------------- command line

def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.avc", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    enc = commands.add_parser("encode", help="encode a video file with the paper's settings")
    enc.add_argument("input")
    enc.add_argument("-o", "--output", required=True)
    enc.add_argument("--seconds", type=float, default=5)
    enc.add_argument("--fps", type=float, default=3)
    enc.add_argument("--size", type=_size, default=(256, 144), help="WIDTHxHEIGHT (default 256x144)")
    enc.add_argument("--qp", type=int, default=37)
    enc.add_argument("--keep-sei", action="store_true", help="keep x264's settings SEI (the paper did)")
    show = commands.add_parser("show", help="check an .h264 stream and write its frames as a PNG strip")
    show.add_argument("input")
    show.add_argument("-o", "--output", required=True)
    show.add_argument("--cols", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        if args.command == "encode":
            data = encode(args.input, seconds=args.seconds, fps=args.fps, size=args.size, qp=args.qp,
                          keep_sei=args.keep_sei)
            Path(args.output).write_bytes(data)
            print(f"{args.output}: {len(data)} bytes, {len(frame_offsets(data))} frames")
        else:
            data = Path(args.input).read_bytes()
            report = validate(data)
            frames = decode(data)
            if not frames:
                raise VideoError(f"{args.input}: FFmpeg decodes no frame ({report.error})")
            filmstrip(frames, args.output, cols=args.cols)
            status = "ok" if report.ok else f"NOT ok at byte {report.offset}: {report.error}"
            print(f"{args.input}: {len(data)} bytes, {len(frames)} frames decoded, {status}; "
                  f"wrote {args.output}")
    except (VideoError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
