"""nanocodec.avc: the paper's libx264 settings take effect, streams round-trip, corrupt bytes never crash."""
import math
import subprocess
import sys
from fractions import Fraction
from functools import lru_cache

import av
import av.logging
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from nanocodec import avc
from nanocodec.h264 import syntax

W, H = 256, 144


def gradient_scene(n=15, width=W, height=H, speed=7):
    """A diagonal colour gradient translating right by `speed` pixels a frame."""
    yy, xx = np.mgrid[:height, :width]
    return [np.stack([(xx * 2 + 3 * yy + speed * i) % 256, (yy * 3 - xx + 5 * i) % 256,
                      np.full_like(xx, 90)], -1).astype(np.uint8) for i in range(n)]


def bouncing_square(n=15, width=W, height=H, side=32):
    """A white square bouncing off the walls of a dark textured background; returns frames, centres."""
    rng = np.random.default_rng(0)
    background = rng.integers(20, 60, (height, width, 1), dtype=np.uint8).repeat(3, -1)
    x, y, dx, dy = 10, 20, 23, 17
    frames, centres = [], []
    for _ in range(n):
        frame = background.copy()
        frame[y:y + side, x:x + side] = 235
        frames.append(frame)
        centres.append((x + side / 2, y + side / 2))
        if not 0 <= x + dx <= width - side:
            dx = -dx
        if not 0 <= y + dy <= height - side:
            dy = -dy
        x, y = x + dx, y + dy
    return frames, centres


@lru_cache(maxsize=None)
def square_stream(keep_sei=False, qp=37):
    return avc.encode(bouncing_square()[0], keep_sei=keep_sei, qp=qp)


@lru_cache(maxsize=None)
def gradient_stream():
    return avc.encode(gradient_scene())


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / mse)


def write_video(path, frames, rate=10, codec="ffv1"):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# ----------------------------------------------------------------------------- the paper's settings

def test_every_paper_option_is_a_name_libavcodec_knows():
    # PyAV drops unknown option names without a word; a typo would silently lose a setting.
    options = av.CodecContext.create("libx264", "w").supported_options
    known = {o.name for o in options.generic} | {o.name for o in options.private}
    assert set(avc.PAPER_X264_OPTIONS) | {"qp"} <= known


def test_x264_settings_text_shows_each_paper_flag():
    settings = avc.x264_settings(square_stream(keep_sei=True))
    intra, inter = settings["analyse"].split(":")
    assert int(inter, 16) == 0  # partitions none
    assert {k: settings[k] for k in ("cabac", "ref", "me", "subme", "psy", "mixed_ref", "trellis",
                                     "fast_pskip", "threads", "slice_max_mbs", "bframes", "rc", "qp")} == {
        "cabac": "0", "ref": "3", "me": "dia", "subme": "0", "psy": "0", "mixed_ref": "0",
        "trellis": "0", "fast_pskip": "0", "threads": "1", "slice_max_mbs": "1", "bframes": "0",
        "rc": "cqp", "qp": "37"}


def test_sps_and_pps_say_baseline_cavlc_three_refs_256x144():
    spss, ppss = avc.parameter_sets(square_stream())
    (sps,), (pps,) = spss.values(), ppss.values()
    assert (sps.profile_idc, sps.max_num_ref_frames, sps.width_mbs, sps.height_mbs) == (66, 3, 16, 9)
    assert sps.frame_mbs_only and not pps.cabac


def test_one_macroblock_per_slice():
    slices = avc.slice_headers(square_stream())
    assert len(slices) == 15 * 144
    assert [s.first_mb for s in slices] == list(range(144)) * 15


def test_slice_types_and_qp_come_from_the_settings():
    slices = avc.slice_headers(square_stream())
    assert {s.type for s in slices} == {"I", "P"}
    assert {s.type for s in slices[:144]} == {"I"}
    assert {s.qp for s in slices if s.type == "P"} == {37}
    # x264's constant-QP mode codes I pictures ip_ratio (1.4) finer: qp - 6*log2(1.4), rounded.
    assert {s.qp for s in slices if s.type == "I"} == {round(37 - 6 * math.log2(1.4))}
    assert {s.qp for s in avc.slice_headers(square_stream(qp=30)) if s.type == "P"} == {30}


def test_slice_header_parser_reads_high_profile_streams_too():
    # x264's defaults exercise what the paper's stream lacks: CABAC, B slices, weighted P
    # prediction, POC type 0 and several slices a picture; a mis-skipped field would garble the QPs.
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = W, H, "yuv420p", Fraction(1, 3)
    ctx.options = {"qp": "30", "threads": "1", "x264-params": "slices=3:weightp=2:ref=4"}
    packets = []
    for pts, frame in enumerate(bouncing_square()[0]):
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts = pts
        packets += ctx.encode(picture)
    data = b"".join(bytes(p) for p in packets + ctx.encode(None))
    (sps,), (pps,) = (d.values() for d in avc.parameter_sets(data))
    assert sps.profile_idc == 100 and sps.poc_type == 0 and pps.cabac and pps.weighted_pred
    slices = avc.slice_headers(data)
    assert sorted(s.first_mb for s in slices) == sorted([0, 48, 96] * 15)
    qp_by_type = {t: {s.qp for s in slices if s.type == t} for t in ("I", "P", "B")}
    assert qp_by_type == {"I": {27}, "P": {30}, "B": {32}}  # x264's ip_ratio 1.4 and pb_ratio 1.3


def test_sei_is_stripped_and_nothing_else_changes():
    kept, stripped = square_stream(keep_sei=True), square_stream()
    removed = [n for n in avc.nal_units(kept) if n.type == 6]
    assert len(removed) == 1 and 400 < removed[0].size < 800
    assert len(kept) - len(stripped) == removed[0].size
    assert kept.replace(kept[removed[0].offset:removed[0].offset + removed[0].size], b"") == stripped
    assert avc.x264_settings(stripped) == {} and 6 not in {n.type for n in avc.nal_units(stripped)}


def test_encoding_is_deterministic():
    assert avc.encode(bouncing_square()[0]) == square_stream()


# ----------------------------------------------------------------------------- round trips

def test_fifteen_frames_decode_back_close_to_the_source():
    frames, centres = bouncing_square()
    decoded = avc.decode(square_stream())
    assert len(decoded) == 15 and all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in decoded)
    assert min(psnr(a, b) for a, b in zip(frames, decoded)) > 24
    for frame, (cx, cy) in zip(decoded, centres):
        ys, xs = np.nonzero(frame.mean(-1) > 150)
        assert abs(xs.mean() - cx) < 2 and abs(ys.mean() - cy) < 2
    gradient = avc.decode(gradient_stream())
    assert len(gradient) == 15 and min(psnr(a, b) for a, b in zip(gradient_scene(), gradient)) > 24


def test_nal_units_tile_the_stream():
    data = square_stream(keep_sei=True)
    nals = avc.nal_units(data)
    assert nals[0].offset == 0 and sum(n.size for n in nals) == len(data)
    assert all(a.offset + a.size == b.offset for a, b in zip(nals, nals[1:]))
    assert all(data[n.offset:n.offset + n.start_code].lstrip(b"\0") == b"\1" for n in nals)
    assert [n.type for n in nals[:3]] == [7, 8, 6]


def test_frame_offsets_point_at_each_pictures_first_slice():
    data = square_stream()
    offsets = avc.frame_offsets(data)
    starts = {n.offset: n for n in avc.nal_units(data)}
    assert len(offsets) == 15 and offsets == sorted(offsets)
    assert all(starts[o].type in (1, 5) for o in offsets) and starts[offsets[0]].type == 5
    assert offsets == [s.offset for s in avc.slice_headers(data) if s.first_mb == 0]


@pytest.mark.parametrize("k", range(16))
def test_prompt_holds_exactly_k_pictures(k):
    data = square_stream()
    cut = avc.prompt(data, k)
    assert data.startswith(cut) and len(avc.frame_offsets(cut)) == k
    assert len(avc.decode(cut)) == k
    assert {n.type for n in avc.nal_units(cut)} >= {7, 8}
    if k:
        assert avc.validate(cut) == avc.Report(True, k, len(cut), None)


def test_prompt_rejects_frame_counts_the_stream_lacks():
    for bad in (-1, 16):
        with pytest.raises(ValueError, match="15 pictures"):
            avc.prompt(square_stream(), bad)


def test_prompt_cuts_parameter_sets_repeated_for_a_later_idr_with_that_picture():
    # A scene cut makes x264 start an IDR picture, repeating SPS and PPS in front of it.
    frames = bouncing_square(8)[0] + gradient_scene(7)
    data = avc.encode(frames)
    idr = [i for i, s in enumerate(avc.slice_headers(data)) if s.nal_type == 5 and s.first_mb == 0]
    assert idr[0] == 0 and len(idr) == 2
    k = idr[1] // 144
    cut = avc.prompt(data, k)
    assert [n.type for n in avc.nal_units(cut)].count(7) == 1
    assert len(avc.decode(cut)) == k and len(avc.decode(data)) == 15


# ----------------------------------------------------------------------------- scaling and padding

def square_on_canvas(width, height, side):
    frame = np.full((height, width, 3), 128, np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top:top + side, left:left + side] = 255
    return frame


def bright_box(frame, threshold=200):
    ys, xs = np.nonzero(frame.mean(-1) > threshold)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


@pytest.mark.parametrize("width,height", [(320, 240), (144, 256), (640, 120)])
def test_other_aspect_ratios_are_padded_black_not_stretched(width, height):
    side = min(width, height) // 2
    decoded = avc.decode(avc.encode([square_on_canvas(width, height, side)] * 3))
    assert len(decoded) == 3
    w, h = avc.fit_size(width, height)
    assert w == W or h == H
    assert abs(w / h - width / height) < 0.02 * width / height
    x, y = ((W - w) // 2) & ~1, ((H - h) // 2) & ~1
    luma = decoded[-1].astype(float).mean(-1)
    bars = np.ones((H, W), bool)
    bars[y:y + h, x:x + w] = False
    inner = np.zeros((H, W), bool)
    inner[y + 3:y + h - 3, x + 3:x + w - 3] = True
    assert bars.any() and luma[bars].mean() < 6 and luma[inner].mean() > 110
    box_w, box_h = bright_box(decoded[-1])
    assert abs(box_w - box_h) <= 3  # the square is still square


@pytest.mark.parametrize("size", [(96, 54), (32, 18), (64, 36)])
def test_small_output_sizes_whose_chroma_rows_do_not_pair_up(size):
    decoded = avc.decode(avc.encode([square_on_canvas(320, 240, 100)] * 2, size=size))
    assert [f.shape for f in decoded] == [(size[1], size[0], 3)] * 2


def test_fit_size_matches_ffmpeg_rounding():
    assert avc.fit_size(1280, 720) == (256, 144)
    assert avc.fit_size(640, 272) == (256, 109)   # 108.8 rounds up
    assert avc.fit_size(144, 256) == (81, 144)    # odd widths are allowed, the pad offset is even
    assert avc.fit_size(176, 144) == (176, 144)   # smaller inputs are scaled up to touch a side


# ----------------------------------------------------------------------------- video files

def stripe_frames(n, width=W, height=H):
    """Frame i shows a white vertical stripe at x = 8 i on black, so its index can be read back."""
    frames = [np.zeros((height, width, 3), np.uint8) for _ in range(n)]
    for i, frame in enumerate(frames):
        frame[:, (8 * i) % (width - 6):(8 * i) % (width - 6) + 6] = 255
    return frames


def stripe_index(frame):
    return round((np.nonzero(frame.mean((0, 2)) > 128)[0].mean() - 2.5) / 8)


def test_file_is_resampled_by_presentation_time_like_ffmpeg_fps(tmp_path):
    path = tmp_path / "ten_fps.mkv"
    write_video(path, stripe_frames(30), rate=10)  # 3 s at 10 fps
    shown = [stripe_index(f) for f in avc.decode(avc.encode(path))]
    # ffmpeg's fps filter: output tick n shows the last frame whose time rounds to a tick <= n.
    expected = [max(i for i in range(30) if math.floor(i * 3 / 10 + 0.5) <= n) for n in range(9)]
    assert shown == expected


def test_file_is_cut_at_five_seconds(tmp_path):
    path = tmp_path / "long.mkv"
    write_video(path, stripe_frames(70), rate=10)
    data = avc.encode(path)
    assert len(avc.frame_offsets(data)) == 15
    assert len(avc.frame_offsets(avc.encode(path, seconds=2, fps=2))) == 4


def test_non_square_pixels_are_passed_to_the_vui(tmp_path):
    path = tmp_path / "sar.mp4"  # Matroska via PyAV drops the aspect ratio; MP4 keeps it
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.sample_aspect_ratio = Fraction(4, 3)
        for frame in stripe_frames(5, 96, 64):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as check:
        assert check.streams.video[0].sample_aspect_ratio == Fraction(4, 3)
    data = avc.encode(path)
    w, h = avc.fit_size(96, 64)
    ctx = av.CodecContext.create("h264", "r")
    ctx.decode(ctx.parse(data)[0])
    assert ctx.sample_aspect_ratio == Fraction(4, 3) * Fraction(h * 96, w * 64)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_display_rotation_is_applied_like_ffmpeg_autorotate(tmp_path, degrees):
    path = tmp_path / "rotated.mp4"
    stored = np.zeros((64, 96, 3), np.uint8)
    stored[:32, :48] = 255  # the stored picture's top-left quadrant
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(degrees)  # counter-clockwise, as VideoFrame.rotation reads it
        for _ in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode(None))
    upright = np.rot90(stored, degrees // 90)
    w, h = avc.fit_size(upright.shape[1], upright.shape[0])
    x, y = ((W - w) // 2) & ~1, ((H - h) // 2) & ~1
    picture = avc.decode(avc.encode(path))[-1][y:y + h, x:x + w].mean(-1)
    expected = np.asarray(Image.fromarray(upright).resize((w, h))).mean(-1)
    assert np.abs(picture - expected).mean() < 12


def test_pil_images_are_accepted():
    frames, _ = bouncing_square(4)
    assert avc.encode([Image.fromarray(f) for f in frames]) == avc.encode(frames)


@pytest.mark.parametrize("kind", ["empty", "text", "audio", "missing"])
def test_unreadable_files_raise_video_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    elif kind == "audio":
        path = tmp_path / "audio.wav"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("pcm_s16le", rate=8000)
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16",
                                                 layout="mono")
            samples.sample_rate = 8000
            container.mux(stream.encode(samples))
            container.mux(stream.encode(None))
    with pytest.raises(avc.VideoError, match=str(path.name)) as error:
        avc.encode(path)
    if kind == "audio":
        assert "no video stream" in str(error.value)


@pytest.mark.parametrize("frames,match", [([], "no frames"),
                                          ([np.zeros((144, 256, 3), np.float32)], "uint8"),
                                          ([np.zeros((144, 256), np.uint8)], "HxWx3")])
def test_bad_frame_sequences_raise_video_error(frames, match):
    with pytest.raises(avc.VideoError, match=match):
        avc.encode(frames)


def test_bad_settings_raise_value_error():
    for kwargs in ({"size": (255, 144)}, {"qp": 60}, {"fps": 0}):
        with pytest.raises(ValueError):
            avc.encode(gradient_scene(2), **kwargs)


# ----------------------------------------------------------------------------- corrupt streams

def ffmpeg_complains(data):
    """Independent look: a plain lenient decode, watching FFmpeg's error log and corrupt flags."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:
            ctx = av.CodecContext.create("h264", "r")
            ctx.thread_count = 1
            corrupt = False
            try:
                for packet in ctx.parse(data) + ctx.parse(None) + [None]:
                    corrupt |= any(f.is_corrupt for f in ctx.decode(packet))
            except av.FFmpegError:
                return True
        return corrupt or bool(logs)
    finally:
        av.logging.set_level(level)


def test_validate_finds_the_picture_where_a_truncated_stream_breaks():
    data = square_stream()
    offsets = avc.frame_offsets(data)
    for k in (1, 7, 14):
        report = avc.validate(data[:offsets[k] + 40])  # partway into picture k's first slices
        assert not report.ok and report.frames == k and report.offset == offsets[k]


def test_validate_rejects_a_picture_missing_a_slice():
    data = square_stream()
    nal = [n for n in avc.nal_units(data) if n.type in (1, 5)][144 * 4 + 70]
    report = avc.validate(data[:nal.offset] + data[nal.offset + nal.size:])
    assert not report.ok and report.frames == 4 and "concealed" in report.error


@pytest.mark.parametrize("data", [b"", b"\x00" * 64, b"hello world" * 20, b"\x00\x00\x01\x65" * 8])
def test_garbage_is_reported_not_ok(data):
    level = av.logging.get_level()
    report = avc.validate(data)
    assert not report.ok and report.frames == 0 and avc.decode(data) == []
    assert av.logging.get_level() == level  # validate leaves the global log level as it was


def test_the_same_error_twice_is_reported_twice():
    data = avc.prompt(square_stream(), 1)
    sps = next(n for n in avc.nal_units(data) if n.type == 7)
    # A bit flip in the SPS's VUI timing info: FFmpeg logs one error and nothing else.
    flips = (data[:at] + bytes([data[at] ^ 1 << bit]) + data[at + 1:]
             for at in range(sps.offset + 5, sps.offset + sps.size) for bit in range(8))
    broken = next(d for d in flips if "time_scale" in (avc.validate(d).error or ""))
    skip = av.logging.get_skip_repeated()
    first, second = avc.validate(broken), avc.validate(broken)  # PyAV would drop the repeated message
    assert not first.ok and first == second
    assert av.logging.get_skip_repeated() == skip


def test_streams_with_and_without_sei_validate():
    for data in (square_stream(), square_stream(keep_sei=True), gradient_stream()):
        assert avc.validate(data) == avc.Report(True, 15, len(data), None)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=40))),
    st.tuples(st.just("delete"), st.tuples(st.integers(0, 10**6), st.integers(1, 300))),
)


def mutate(data, mutation):
    kind, arg = mutation
    out = bytearray(data)
    if kind == "flip":
        for at, mask in arg:
            out[at % len(out)] ^= mask
    elif kind == "cut":
        del out[arg % len(out):]
    elif kind == "insert":
        at, chunk = arg
        out[at % len(out):at % len(out)] = chunk
    else:
        at, length = arg
        del out[at % len(out):at % len(out) + length]
    return bytes(out)


@given(mutations)
def test_mutated_streams_never_raise_and_ffmpeg_errors_are_not_ok(mutation):
    data = mutate(square_stream(), mutation)
    report = avc.validate(data)
    frames = avc.decode(data)
    assert 0 <= report.frames <= len(avc.frame_offsets(data)) and 0 <= report.offset <= len(data)
    if ffmpeg_complains(data):
        assert not report.ok and report.error
    if report.ok:
        assert len(frames) == report.frames == len(avc.frame_offsets(data))


@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(data):
    assert not avc.validate(data).ok or len(avc.decode(data)) == avc.validate(data).frames
    avc.frame_offsets(data)


# ----------------------------------------------------------------------------- bit-level syntax

def ue_bits(v):
    return "0" * ((v + 1).bit_length() - 1) + format(v + 1, "b")


def se_bits(v):
    return ue_bits(2 * v - 1 if v > 0 else -2 * v)


def escape(rbsp):
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


@given(st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=30), st.binary(max_size=40))
def test_exp_golomb_after_emulation_prevention_round_trips(values, tail):
    bits = "".join(ue_bits(abs(v)) + se_bits(v) for v in values)
    bits += "0" * (-len(bits) % 8)
    rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big") + tail
    data = b"\x00\x00\x00\x01\x01" + escape(rbsp)
    nals = avc.nal_units(data)
    assert len(nals) == 1 and nals[0].size == len(data)
    nal = nals[0]
    reader = syntax._Bits(syntax._rbsp(data, nal))
    assert [(reader.ue(), reader.se()) for _ in values] == [(abs(v), v) for v in values]


# ----------------------------------------------------------------------------- pictures and CLI

def test_filmstrip_lays_frames_out_in_rows(tmp_path):
    frames = [np.full((H, W, 3), 20 * i, np.uint8) for i in range(7)]
    sheet = avc.filmstrip(frames, tmp_path / "strip.png", cols=3)
    with Image.open(tmp_path / "strip.png") as png:
        assert png.format == "PNG" and png.size == sheet.size == (3 * W + 4, 3 * H + 4)
        pixels = np.asarray(png.convert("RGB"))
    assert pixels[H + 2 + 10, 2 * (W + 2) + 10].tolist() == [100] * 3  # frame 5: row 1, column 2
    with pytest.raises(ValueError):
        avc.filmstrip([], tmp_path / "none.png")


def test_cli_encodes_and_shows(tmp_path):
    source = tmp_path / "in.mkv"
    write_video(source, bouncing_square(12, width=160, height=120)[0], rate=6)
    stream, strip = tmp_path / "out.h264", tmp_path / "strip.png"
    run = [sys.executable, "-m", "nanocodec.avc"]
    subprocess.run(run + ["encode", str(source), "-o", str(stream)], check=True, capture_output=True)
    assert stream.read_bytes() == avc.encode(source)
    shown = subprocess.run(run + ["show", str(stream), "-o", str(strip)], check=True,
                           capture_output=True, text=True)
    assert "6 frames decoded, ok" in shown.stdout
    assert Image.open(strip).size == (5 * W + 8, 2 * H + 2)
    failed = subprocess.run(run + ["encode", str(tmp_path / "nope.mp4"), "-o", str(stream)],
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "nope.mp4" in failed.stderr
