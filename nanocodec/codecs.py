"""The codecs a model is trained on, as objects: `codec_for(manifest)` looks one up, once.

Owns the `Codec` interface and its two implementations, `JPEG` (images) and `AVC` (H.264 video).
A codec object holds its settings (a data manifest's "codec" entry; the dataclass fields, with the
paper's defaults) and, as class attributes, the defaults of everything else that depends on the codec:
BPE merges and split pattern, the training context, demo size and count, files per shard and per
worker batch, the file extensions a folder walk keeps, the media word messages use. Its methods are
the codec-specific steps the rest of the house shares:
  encode(source) -> bytes          an image/video file or pixels -> the stream the model sees
  prompt(data, amount) -> bytes    a prefix that tokenizes to a prefix (JPEG: a ratio of the MCUs;
                                   AVC: a number of frames)
  validate(data) -> report         `.ok`: the codec's validator accepts the stream as it is
  constraint(tokenizer, prefixes, header=b"") -> sampling.StreamConstraint | None
                                   sampling kept to viable prefixes, built on the class's `validator`
                                   (feed/clone/done/complete); None where the codec has none yet
  header() -> bytes                what every stream with these settings starts with, pinned by
                                   constrained unconditional sampling (JPEG: the headers through
                                   SOS; AVC: the SPS and PPS)
  to_images(data) -> [Image]       a sample as pixels; see the fallback below
  to_file(data) -> bytes           the sample as a standalone file (extension `extension`)
  regions(data) -> uint8 array     a region label per byte (REGIONS) for bits per byte by region
To pixels, one route with one fallback: an invalid stream is shown as the codec's own repair makes
it (JPEG: nanocodec.huffman.repair, the valid restart intervals kept and the rest flat gray; AVC:
FFmpeg's error concealment); a stream with nothing to show even then (a garbled JPEG frame header,
no decodable H.264 frame) gives [] and callers put `blank()` in its place.
`codec_for` is the only place a kind name becomes a codec; a new codec is one class here and one
entry in CODECS.
Does not own: the formats (nanocodec.jpeg, nanocodec.huffman, nanocodec.avc), the constraint
machinery and sampling (nanocodec.sampling), what prepare/eval/sample.py do with the steps.
"""
from __future__ import annotations

import dataclasses
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from nanocodec import avc, demo, h264, huffman, jpeg

REGIONS = ("headers", "entropy", "restart")  # the labels of `regions`, by value
HEADERS, ENTROPY, RESTART = range(3)


class CodecError(ValueError):
    """A manifest or checkpoint naming no codec this library knows."""


class Codec(ABC):
    """One codec with its settings; the subclasses are frozen dataclasses (see the module docstring)."""

    kind: ClassVar[str]  # the manifest's "kind"
    name: ClassVar[str]  # for people: "JPEG", "H.264"
    media: ClassVar[str]  # "images" or "videos", for messages
    video: ClassVar[bool]  # frames in time (prompts count frames) rather than one picture
    extension: ClassVar[str]  # of `to_file`'s output
    split: ClassVar[str]  # nanocodec.bpe split pattern
    default_merges: ClassVar[int]  # BPE merges
    default_context: ClassVar[int | None]  # training context; None: from the data (the longest stream)
    demo_size: ClassVar[Any]  # `size` of the demo data (small enough to train on a CPU in minutes)
    demo_count: ClassVar[int]  # demo items
    shard_files: ClassVar[int]  # files per shard
    batch: ClassVar[int]  # files per worker task in prepare
    size_form: ClassVar[str]  # how --size is written for this codec
    by_region: ClassVar[bool]  # `regions` tells more than headers: bits per byte are reported by region
    validator: ClassVar[type | None]  # incremental validator for `constraint`; None: no --constrain yet

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Codec:
        """The codec with a manifest's settings; missing ones take the defaults, unknown ones are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})

    def configure(self, **options: Any) -> Codec:
        """A copy with those of `options` (e.g. prepare's size, quality, qp) that this codec has."""
        names = {f.name for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in options.items() if k in names and v is not None})

    def settings(self) -> dict[str, Any]:
        """The settings as a manifest records them (JSON types, field order)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @abstractmethod
    def check(self) -> None:
        """Raise ValueError or TypeError for settings the codec refuses (a JPEG size no multiple of 16)."""

    @classmethod
    @abstractmethod
    def extensions(cls) -> frozenset[str]:
        """Lower-case file extensions (with the dot) a folder walk keeps as sources."""

    @abstractmethod
    def demo(self, count: int, seed: int) -> tuple[list[str], Callable[[list[int]], Iterable[Any]]]:
        """(names of `count` demo items, a function from ascending indices to their encode sources)."""

    @abstractmethod
    def encode(self, source: Any) -> bytes:
        """The stream the model sees for a file path or pixels."""

    @abstractmethod
    def prompt(self, data: bytes, amount: float) -> bytes:
        """A prefix of `data` cut where its tokens are a prefix of the whole stream's."""

    @abstractmethod
    def validate(self, data: bytes) -> Any:
        """The validator's report on `data` as a whole stream; `.ok` says whether it is valid."""

    @property
    @abstractmethod
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the pictures."""

    @abstractmethod
    def header(self) -> bytes:
        """The bytes every stream with these settings starts with (b"" if none is pinned)."""

    @abstractmethod
    def to_images(self, data: bytes) -> list[Image.Image]:
        """The pictures of a sample (RGB), repaired when invalid; [] when nothing decodes."""

    @abstractmethod
    def to_file(self, data: bytes) -> bytes:
        """The sample as a standalone file; raises ValueError when nothing in it decodes."""

    @abstractmethod
    def regions(self, data: bytes) -> np.ndarray:
        """The region (HEADERS, ENTROPY or RESTART) of every byte of a stream, as uint8."""

    def blank(self) -> Image.Image:
        """The black picture that stands in for a sample with nothing to show."""
        return Image.new("RGB", self.frame_size)

    def constraint(self, tokenizer, prefixes: Sequence[bytes], header: bytes = b""):
        """A `nanocodec.sampling.StreamConstraint` keeping each row viable, or None without a validator."""
        if self.validator is None:
            return None
        from nanocodec.sampling import StreamConstraint

        return StreamConstraint(self.validator, tokenizer, prefixes, header, stream=self.name)

    def constraint_problem(self) -> str | None:
        """Why --constrain cannot serve this codec (None when it can): the one refusal message."""
        if self.validator is not None:
            return None
        able = " and ".join(c.name for c in CODECS.values() if c.validator is not None)
        return f"--constrain checks {able} streams only; this checkpoint models {self.name} ({self.kind})"


@dataclass(frozen=True)
class JPEG(Codec):
    """Abbreviated baseline JPEG as Pillow writes it (paper, appendix D: q25, 4:2:0, a restart
    marker after every MCU)."""

    size: int = jpeg.SIZE
    quality: int = jpeg.QUALITY
    subsampling: str = jpeg.SUBSAMPLING
    restart_blocks: int = jpeg.RESTART_BLOCKS

    # (class attributes, not settings: Codec declares them)
    kind, name, media, video, extension = "jpeg", "JPEG", "images", False, ".jpg"
    split, default_merges, default_context = "jpeg", 320, 1024  # a 64 px demo JPEG is ~420 tokens
    demo_size, demo_count = 64, 4096  # 64 px: 16 MCUs, ~500 bytes
    # ~20M tokens per shard at 256 px (5K tokens per image); per-batch costs of BPE fade by about 100
    # images (measured: 16 per batch tokenizes 2.2x slower than 128)
    shard_files, batch = 4096, 128
    size_form, by_region, validator = "one number", True, huffman.Validator

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int(self.size))

    def check(self) -> None:
        jpeg.encode(Image.new("RGB", (16, 16)), **self.settings())

    @classmethod
    def extensions(cls) -> frozenset[str]:
        return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

    def demo(self, count: int, seed: int) -> tuple[list[str], Callable[[list[int]], Iterable[Any]]]:
        plan = demo.image_crops(count, seed)
        return [p.name for p in plan], lambda idx: demo.render_images([plan[i] for i in idx], self.size)

    def encode(self, source: Any) -> bytes:
        return jpeg.encode(source, **self.settings())

    def prompt(self, data: bytes, amount: float) -> bytes:
        return jpeg.prompt(data, amount)

    def validate(self, data: bytes) -> huffman.Report:
        return huffman.validate(data)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.size, self.size

    def header(self) -> bytes:
        gray = Image.new("RGB", self.frame_size, (128, 128, 128))
        return jpeg.prompt(self.encode(gray), 0.0)

    def to_file(self, data: bytes) -> bytes:
        full = jpeg.restore(data, self.quality, self.subsampling)
        return full if huffman.validate(full).ok else huffman.repair(full)

    def to_images(self, data: bytes) -> list[Image.Image]:
        try:
            im = Image.open(io.BytesIO(self.to_file(data)))
            im.load()
        except (ValueError, OSError):  # no usable frame header: nothing a decoder can show
            return []
        return [im.convert("RGB")]

    def regions(self, data: bytes) -> np.ndarray:
        """Bytes before the end of SOS are headers; after it, the scan is entropy data except RST
        markers (FF D0..D7); the marker that ends the scan (EOI) and anything after it are headers
        again. A stream whose header does not parse is all headers."""
        labels = np.full(len(data), HEADERS, dtype=np.uint8)
        try:
            pos = jpeg.frame_info(data).scan_start
        except jpeg.InvalidJPEG:
            return labels
        labels[pos:] = ENTROPY
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= len(data):
                return labels
            marker = data[pos + 1]
            if 0xD0 <= marker <= 0xD7:
                labels[pos : pos + 2] = RESTART
            elif marker not in (0x00, 0xFF):
                labels[pos:] = HEADERS
                return labels
            pos += 2 if marker != 0xFF else 1


class SliceContinuation(h264.Validator):
    """`nanocodec.h264.Validator` for constrained sampling: after the first picture only slices follow.

    Streams of the paper's settings carry their SPS and PPS (and x264's SEI) once, before the first
    picture. A model that wanders into an SEI after it writes a valid stream that need not end (an
    SEI payload is any bytes), and new parameter sets after it change nothing a video needs; so a
    constrained continuation may only add slice NAL units (types 1 and 5), and any model, trained or
    random, keeps writing macroblocks until a picture is whole. This keeps every viable prefix
    viable: after a start code a slice can always come. The rule is the validator's own
    (`slices_only`), judged where it dispatches each NAL unit; otherwise the validator's verdicts.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(slices_only=True)


@dataclass(frozen=True)
class AVC(Codec):
    """H.264 Annex-B from x264 (paper, section 4: 5 s at 3 fps, 256x144, constant QP 37, no SEI)."""

    seconds: float = 5
    fps: float = 3
    size: tuple[int, int] = (256, 144)
    qp: int = 37
    keep_sei: bool = False

    # (class attributes, not settings: Codec declares them)
    kind, name, media, video, extension = "avc", "H.264", "videos", True, ".h264"
    split, default_merges, default_context = "avc", 1024, None  # context None: the longest prepared video
    demo_size, demo_count = (64, 36), 256
    shard_files, batch = 1024, 8  # ~20M tokens per shard at 256x144 (15K tokens per video)
    size_form, by_region = "WIDTHxHEIGHT", False
    validator = SliceContinuation

    def __post_init__(self) -> None:
        width, height = self.size
        object.__setattr__(self, "size", (int(width), int(height)))

    def _options(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"size": self.size}

    def check(self) -> None:
        avc.encode([np.zeros((16, 16, 3), np.uint8)], **self._options())

    @classmethod
    def extensions(cls) -> frozenset[str]:
        return VIDEO_EXTENSIONS

    def demo(self, count: int, seed: int) -> tuple[list[str], Callable[[list[int]], Iterable[Any]]]:
        width, height = self.size
        plan = demo.video_windows(count, seed, self.seconds, aspect=width / height)
        return [p.name for p in plan], lambda idx: demo.render_videos([plan[i] for i in idx], self.size,
                                                                      self.seconds, self.fps)

    def encode(self, source: Any) -> bytes:
        return avc.encode(source, **self._options())

    def prompt(self, data: bytes, amount: float) -> bytes:
        return avc.prompt(data, int(amount))

    def validate(self, data: bytes) -> avc.Report:
        return avc.validate(data)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.size

    def header(self) -> bytes:
        """The SPS and PPS x264 writes for these settings and frames given as pixels (the demo data's)."""
        width, height = self.size
        return avc.prompt(self.encode([np.full((height, width, 3), 128, np.uint8)]), 0)

    def to_file(self, data: bytes) -> bytes:
        return bytes(data)

    def to_images(self, data: bytes) -> list[Image.Image]:
        return [Image.fromarray(frame) for frame in avc.decode(data)]

    def regions(self, data: bytes) -> np.ndarray:
        return np.full(len(data), HEADERS, dtype=np.uint8)


VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .y4m .h264 .264".split()
)
CODECS: dict[str, type[Codec]] = {c.kind: c for c in (JPEG, AVC)}


def codec_for(manifest: Mapping[str, Any] | str | Codec, where: str = "the data manifest") -> Codec:
    """The codec of a data manifest or a checkpoint's config.json (their "kind" and "codec" entries),
    or of a bare kind name (default settings); a Codec is returned as it is. `where` names the
    source in the error (CodecError) for a kind this library does not know."""
    if isinstance(manifest, Codec):
        return manifest
    kind, settings = (manifest, {}) if isinstance(manifest, str) else (manifest.get("kind"), manifest.get("codec") or {})
    if kind not in CODECS:
        raise CodecError(f"{where}: unknown codec kind {kind!r} (this library knows {', '.join(CODECS)}); "
                         f"prepare the data with python -m nanocodec.prepare --kind {'|'.join(CODECS)}")
    return CODECS[kind].from_settings(settings)
