"""nanocodec.jpeg: the paper's abbreviated streams, table restoration, prompts, bad input."""
import io
import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from nanocodec import jpeg

MODES = ["1", "L", "LA", "P", "PT", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]


def make_pixels(kind: str, w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "flat":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "gradient":
        y, x = np.mgrid[0:h, 0:w]
        return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    for i in range(6):  # text-like hard edges
        draw.text((int(rng.integers(0, max(w - 20, 1))), int(rng.integers(0, max(h - 10, 1)))), "JPEG-LM" + str(i), fill=(0, 0, 0))
    return np.asarray(im)


def in_mode(rgb: np.ndarray, mode: str) -> Image.Image:
    im = Image.fromarray(rgb)
    if mode == "PT":
        p = im.convert("P")
        p.info["transparency"] = 0
        return p
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(rgb[..., 1].astype(np.int32) * 100)
    if mode == "F":
        return Image.fromarray(rgb[..., 2].astype(np.float32) / 255.0)
    if mode == "LA":
        return Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]))
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, rgb[..., 0]]))
    return im.convert(mode)


images = st.builds(
    lambda kind, w, h, seed, mode: (kind, in_mode(make_pixels(kind, w, h, seed), mode)),
    st.sampled_from(["flat", "noise", "gradient", "text"]),
    st.integers(1, 16).map(lambda k: 16 * k),
    st.integers(1, 16).map(lambda k: 16 * k),
    st.integers(0, 2**31),
    st.sampled_from(MODES),
)


def pillow_full(im: Image.Image, quality=25, subsampling="4:2:0") -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, subsampling=subsampling, streamtype=0, restart_marker_blocks=1)
    return buf.getvalue()


def rst_count(data: bytes) -> int:
    scan = jpeg.frame_info(data).scan_start
    return sum(1 for i in range(scan, len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7)


@given(images, st.sampled_from(["4:2:0", "4:4:4"]), st.sampled_from([25, 60]))
def test_restore_is_pillow_full_stream_of_the_same_pixels(case, subsampling, quality):
    _, im = case
    side = min(im.size)
    data = jpeg.encode(im, size=side, quality=quality, subsampling=subsampling)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    assert b"\xff\xdb" not in data[: jpeg.frame_info(data).scan_start]  # no tables in what the model sees
    pixels = jpeg.square_crop(jpeg.to_rgb(im))
    assert jpeg.restore(data, quality, subsampling) == pillow_full(pixels, quality, subsampling)


@settings(max_examples=15)
@given(images)
def test_decode_equals_pillow_decode_of_the_full_stream(case):
    _, im = case
    data = jpeg.encode(im, size=min(im.size))
    ours = np.asarray(jpeg.decode(data))
    theirs = np.asarray(Image.open(io.BytesIO(jpeg.restore(data))).convert("RGB"))
    assert ours.shape == (min(im.size), min(im.size), 3)
    assert np.array_equal(ours, theirs)


@given(images, st.floats(0, 1), st.sampled_from([16, 32, 48]))
def test_prompt_is_a_prefix_with_the_right_number_of_mcus(case, ratio, size):
    _, im = case
    data = jpeg.encode(im, size=size)
    total = jpeg.mcu_count(data)
    assert total == (size // 16) ** 2
    keep = math.floor(ratio * total)
    cut = jpeg.prompt(data, ratio)
    assert data.startswith(cut)
    assert jpeg.encode(im, size=size) == data and jpeg.prompt(data, ratio) == cut  # deterministic
    if keep == total:
        assert cut == data
    else:
        assert rst_count(cut) == keep
        assert len(cut) == jpeg.restart_offsets(data)[keep]
        assert keep == 0 or cut[-2] == 0xFF and 0xD0 <= cut[-1] <= 0xD7


def test_prompt_extremes_and_errors():
    data = jpeg.encode(Image.fromarray(make_pixels("noise", 64, 64, 1)), size=64)
    assert jpeg.prompt(data, 0.0) == data[: jpeg.frame_info(data).scan_start]
    assert jpeg.prompt(data, 1.0) == data
    with pytest.raises(ValueError, match="ratio"):
        jpeg.prompt(data, 1.5)
    no_rst = jpeg.encode(Image.fromarray(make_pixels("noise", 64, 64, 1)), size=64, restart_blocks=0)
    with pytest.raises(ValueError, match="no restart markers"):
        jpeg.prompt(no_rst, 0.5)


def test_restart_offsets_count_every_interval():
    data = jpeg.encode(Image.fromarray(make_pixels("gradient", 80, 96, 3)), size=64)
    offsets = jpeg.restart_offsets(data)
    assert len(offsets) == jpeg.mcu_count(data) == 16
    assert all(data[o - 2] == 0xFF and 0xD0 <= data[o - 1] <= 0xD7 for o in offsets[1:])
    assert [data[o - 1] - 0xD0 for o in offsets[1:]] == [i % 8 for i in range(15)]


def test_center_and_random_crops():
    rgb = make_pixels("gradient", 160, 64, 5)
    center = jpeg.square_crop(Image.fromarray(rgb))
    assert np.array_equal(np.asarray(center), rgb[:, 48:112])
    a = jpeg.encode(Image.fromarray(rgb), size=32, crop="random", rng=7)
    b = jpeg.encode(Image.fromarray(rgb), size=32, crop="random", rng=7)
    assert a == b
    with pytest.raises(ValueError, match="crop"):
        jpeg.encode(Image.fromarray(rgb), size=32, crop="left")


def test_alpha_is_composited_on_black():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 255  # white, fully transparent
    assert np.asarray(jpeg.to_rgb(Image.fromarray(rgba))).max() == 0


@pytest.mark.parametrize("size", [0, -16, 20, 100])
def test_size_must_be_a_multiple_of_the_mcu(size):
    with pytest.raises(ValueError, match="size must be a positive multiple of 16"):
        jpeg.encode(Image.new("RGB", (32, 32)), size=size)


def png_header_bomb() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_pixels("noise", 64, 64, 2)).save(buf, "PNG")
    return buf.getvalue()[:300]


@pytest.mark.parametrize(
    "content, words",
    [(b"", "empty"), (truncated_png(), "broken.png"), (b"hello, I am a text file\n" * 20, "cannot identify"), (png_header_bomb(), "decompression bomb")],
    ids=["zero-bytes", "truncated-png", "text", "header-bomb"],
)
def test_bad_inputs_raise_image_error_naming_the_file(tmp_path, content, words):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(jpeg.ImageError, match=words) as err:
        jpeg.encode(path)
    assert "broken.png" in str(err.value)
    with pytest.raises(jpeg.ImageError):
        jpeg.encode(content)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_image_error(blob):
    try:
        jpeg.encode(blob, size=16)
    except jpeg.ImageError:
        pass


def test_cli_encode_and_restore(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(make_pixels("text", 40, 40, 9)).save(src)
    (tmp_path / "bad.png").write_bytes(b"nope")
    out = tmp_path / "out"
    assert jpeg.main(["encode", str(src), str(tmp_path / "bad.png"), "-o", str(out), "--size", "32"]) == 1
    abbreviated = (out / "a.jpg").read_bytes()
    assert abbreviated == jpeg.encode(src, size=32)
    assert jpeg.main(["restore", str(out / "a.jpg"), "-o", str(tmp_path / "full.jpg")]) == 0
    assert Image.open(tmp_path / "full.jpg").size == (32, 32)
