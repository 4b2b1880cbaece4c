"""nanocodec.codecs: looking a codec up from a manifest, each codec's defaults, and its steps
agreeing with the format modules they stand on."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nanocodec import avc, huffman, jpeg
from nanocodec.codecs import AVC, CODECS, HEADERS, JPEG, Codec, CodecError, SliceContinuation, codec_for


def test_unknown_kind_names_the_manifest_and_the_fix():
    with pytest.raises(CodecError) as e:
        codec_for({"kind": "png", "codec": {}}, where="data/x/manifest.json")
    message = str(e.value)
    assert message.startswith("data/x/manifest.json: unknown codec kind 'png'")
    assert "jpeg" in message and "avc" in message and "python -m nanocodec.prepare --kind" in message
    with pytest.raises(CodecError, match="unknown codec kind None"):
        codec_for({})  # a manifest without a kind


def test_codec_for_reads_a_manifest_a_config_or_a_name():
    manifest = {"kind": "jpeg", "codec": {"size": 64, "quality": 30, "subsampling": "4:4:4", "restart_blocks": 2}}
    assert codec_for(manifest) == JPEG(size=64, quality=30, subsampling="4:4:4", restart_blocks=2)
    video = json.loads(json.dumps({"kind": "avc", "codec": AVC(size=(64, 36), qp=30).settings()}))  # as read back
    assert codec_for(video) == AVC(size=(64, 36), qp=30) and codec_for(video).size == (64, 36)
    assert codec_for("avc") == AVC() and codec_for(JPEG(size=32)) == JPEG(size=32)
    # missing settings take the defaults; keys a codec does not have are ignored
    assert codec_for({"kind": "jpeg", "codec": {"size": 48, "future_key": 1}}) == JPEG(size=48)
    assert set(CODECS) == {"jpeg", "avc"} and all(issubclass(c, Codec) for c in CODECS.values())


def test_jpeg_defaults_are_the_papers():
    c = JPEG()
    assert c.settings() == {"size": 256, "quality": 25, "subsampling": "4:2:0", "restart_blocks": 1}
    assert (c.kind, c.split, c.media, c.video, c.extension) == ("jpeg", "jpeg", "images", False, ".jpg")
    assert (c.default_merges, c.default_context, c.demo_size, c.demo_count) == (320, 1024, 64, 4096)
    assert (c.shard_files, c.batch, c.by_region, c.validator) == (4096, 128, True, huffman.Validator)
    assert ".jpg" in c.extensions() and ".png" in c.extensions() and ".mp4" not in c.extensions()
    assert c.constraint_problem() is None


def test_avc_defaults_are_the_papers():
    c = AVC()
    assert c.settings() == {"seconds": 5, "fps": 3, "size": [256, 144], "qp": 37, "keep_sei": False}
    assert (c.kind, c.split, c.media, c.video, c.extension) == ("avc", "avc", "videos", True, ".h264")
    assert (c.default_merges, c.default_context, c.demo_size, c.demo_count) == (1024, None, (64, 36), 256)
    assert (c.shard_files, c.batch, c.by_region, c.validator) == (1024, 8, False, SliceContinuation)
    assert ".mp4" in c.extensions() and ".jpg" not in c.extensions()
    assert c.constraint_problem() is None


def test_configure_keeps_only_the_options_a_codec_has():
    assert JPEG().configure(size=64, quality=30, qp=20) == JPEG(size=64, quality=30)
    assert AVC().configure(size=(64, 36), quality=30, qp=20) == AVC(size=(64, 36), qp=20)
    assert JPEG(size=64).configure(size=None) == JPEG(size=64)
    with pytest.raises(ValueError, match="multiple of 16"):
        JPEG(size=40).check()


def test_jpeg_steps_match_the_format_module():
    c = JPEG(size=32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    data = c.encode(image)
    assert data == jpeg.encode(image, size=32)
    assert c.prompt(data, 0.5) == jpeg.prompt(data, 0.5) and c.header() == jpeg.prompt(data, 0.0)
    assert c.validate(data).ok and c.to_file(data) == jpeg.restore(data)
    assert np.array_equal(np.asarray(c.to_images(data)[0]), np.asarray(jpeg.decode(data)))
    regions = c.regions(data)
    assert regions.dtype == np.uint8 and len(regions) == len(data) and (regions[: len(c.header())] == HEADERS).all()
    # the fallback: a cut stream is shown repaired, a stream with no frame header shows nothing
    cut = c.prompt(data, 0.5)
    assert np.array_equal(np.asarray(c.to_images(cut)[0]), np.asarray(jpeg.decode(cut, repair=True)))
    assert c.to_images(b"\xff\xd8garbage") == [] and c.blank().size == (32, 32)


def test_avc_steps_match_the_format_module():
    c = AVC(size=(32, 16), seconds=1, fps=3)
    frames = [np.full((16, 32, 3), 40 * i, np.uint8) for i in range(3)]
    data = c.encode(frames)
    assert data == avc.encode(frames, seconds=1, fps=3, size=(32, 16))
    assert c.prompt(data, 2) == avc.prompt(data, 2) and c.validate(data).ok and c.to_file(data) == data
    pictures = c.to_images(data)
    assert len(pictures) == 3 and all(p.size == (32, 16) for p in pictures)
    assert c.to_images(b"\x00\x00\x01garbage") == [] and c.blank().size == (32, 16)
    assert (c.regions(data) == HEADERS).all() and c.header() == avc.prompt(data, 0)  # the SPS and PPS
