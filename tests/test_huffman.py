"""nanocodec.huffman: validating real and hand-built JPEG streams, incremental checks, repair, CLI.

Besides Pillow's streams, a tiny reference encoder below writes baseline JPEGs from explicit
coefficient symbols with the standard tables (read from Pillow, not from the module under test):
it covers the sampling factors Pillow cannot write (4:4:0, 4:1:1), edge MCUs of any image size,
coefficient 63, ZRL runs, and lets a test write exactly one rule violation.
"""
import ast
import inspect
import io
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from nanocodec import huffman, jpeg
from nanocodec.huffman import RepairError, Validator, repair, tables, validate, walk

SAMPLINGS = {"4:4:4": (1, 1), "4:2:2": (2, 1), "4:2:0": (2, 2), "4:4:0": (1, 2), "4:1:1": (4, 1)}


# --- streams from Pillow ------------------------------------------------------------------------


def picture(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shapes plus noise: a mix of empty and busy blocks, like photos at q25."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    waves = [128 + 100 * np.sin(x / (3 + c) + y / (5 + 2 * c) + seed) for c in range(3)]
    base = np.stack(waves, -1)
    noisy = base + rng.normal(0, 25, base.shape) * (x[..., None] > width // 2)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def pillow_stream(width=48, height=32, seed=0, subsampling="4:2:0", restart=1, abbreviated=True,
                  mode="RGB", quality=25, **extra) -> bytes:
    im = picture(width, height, seed).convert(mode)
    buf = io.BytesIO()
    kwargs = {"restart_marker_blocks": restart} if restart else {}
    if mode == "RGB":
        kwargs["subsampling"] = subsampling
    im.save(buf, "JPEG", quality=quality, streamtype=2 if abbreviated else 0, **kwargs, **extra)
    return buf.getvalue()


def expected_mcus(width, height, factors) -> int:
    h, v = factors
    return math.ceil(width / (8 * h)) * math.ceil(height / (8 * v))


def decodable(data: bytes, subsampling="4:2:0") -> Image.Image:
    """Pillow's full decode (tables restored for abbreviated streams); raises if Pillow fails."""
    im = Image.open(io.BytesIO(jpeg.restore(data, 25, subsampling)))
    im.load()
    return im


STREAMS = {
    (sub, rb, abbreviated): pillow_stream(37, 21, 1, sub, rb, abbreviated)
    for sub in ("4:4:4", "4:2:2", "4:2:0") for rb in (0, 1, 3) for abbreviated in (True, False)
}
STREAMS["gray", 2, False] = pillow_stream(29, 19, 2, restart=2, abbreviated=False, mode="L")
STREAMS["cmyk", 0, False] = pillow_stream(20, 12, 3, restart=0, abbreviated=False, mode="CMYK")
STREAM_LIST = sorted(STREAMS.items(), key=str)
REFERENCE = pillow_stream(64, 48, 7)  # 12 MCUs, RST after each, abbreviated: the model's format


# --- a reference encoder ------------------------------------------------------------------------


def pillow_tables() -> dict[tuple[int, int], tuple[bytes, bytes]]:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", quality=50, streamtype=1)
    data, pos, tables = buf.getvalue(), 2, {}
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        body, i = data[pos + 4:end], 0
        while data[pos + 1] == 0xC4 and i < len(body):
            counts = body[i + 1:i + 17]
            tables[body[i] >> 4, body[i] & 15] = counts, body[i + 17:i + 17 + sum(counts)]
            i += 17 + sum(counts)
        pos = end
    return tables


TABLES = pillow_tables()


def code_book(counts: bytes, symbols: bytes) -> dict[int, str]:
    book, code, i = {}, 0, 0
    for length, count in enumerate(counts, 1):
        for _ in range(count):
            book[symbols[i]] = format(code, f"0{length}b")
            code, i = code + 1, i + 1
        code <<= 1
    return book


BOOKS = {key: code_book(*value) for key, value in TABLES.items()}


def magnitude(value: int) -> tuple[int, str]:
    size = abs(value).bit_length()
    if not size:
        return 0, ""
    return size, format(value if value >= 0 else value + (1 << size) - 1, f"0{size}b")


def block_bits(dc_diff: int, ac: list[tuple[int, int]], eob: bool, table: int) -> str:
    """One block from explicit symbols; ac holds (zero run, value), value 0 with run 15 = ZRL."""
    dc, acb = BOOKS[0, table], BOOKS[1, table]
    size, bits = magnitude(dc_diff)
    out = [dc[size], bits]
    for run, value in ac:
        size, bits = magnitude(value)
        out += [acb[run << 4 | size], bits]
    return "".join(out + [acb[0]] * eob)


def random_block(rng: random.Random) -> tuple[int, list, bool]:
    """Sparse coefficients: most blocks empty, some reaching coefficient 63 or needing ZRL."""
    zigzag = [0] * 64
    for _ in range(rng.choice([0, 0, 1, 3, 8, 30])):
        zigzag[rng.choice([rng.randrange(1, 64), 63, rng.randrange(1, 6)])] = rng.choice(
            [rng.randint(-3, 3), rng.randint(-1023, 1023)])
    ac, run = [], 0
    for value in zigzag[1:]:
        if not value:
            run += 1
            continue
        while run > 15:
            ac.append((15, 0))
            run -= 16
        ac.append((run, value))
        run = 0
    return rng.randint(-40, 40), ac, run > 0


def segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(body) + 2).to_bytes(2, "big") + body


def reference_stream(width, height, factors, blocks, interval=0, pad="1", rst_shift=0,
                     tables=True, color=True) -> bytes:
    """A baseline JPEG; `blocks(mcu, index)` returns (dc_diff, ac, eob) for each block."""
    h, v = factors
    comps = [(1, h, v, 0)] + ([(2, 1, 1, 1), (3, 1, 1, 1)] if color else [])
    per_mcu = [(c[0], c[3]) for c in comps for _ in range(c[1] * c[2] if color else 1)]
    total = expected_mcus(width, height, factors if color else (1, 1))
    head = b"\xff\xd8" + segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")
    if tables:
        head += segment(0xDB, b"\x00" + bytes([4] * 64)) + segment(0xDB, b"\x01" + bytes([6] * 64))
    head += segment(0xC0, bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") +
                    bytes([len(comps)]) + b"".join(bytes((c, hh << 4 | vv, q))
                                                   for c, hh, vv, q in comps))
    if tables:
        head += segment(0xC4, b"".join(bytes((cls << 4 | tid,)) + TABLES[cls, tid][0] +
                                       TABLES[cls, tid][1] for cls in (0, 1) for tid in (0, 1)))
    if interval:
        head += segment(0xDD, interval.to_bytes(2, "big"))
    head += segment(0xDA, bytes([len(comps)]) + b"".join(bytes((c[0], c[3] * 0x11))
                                                         for c in comps) + b"\x00\x3f\x00")
    scan, bits, rst = bytearray(), [], 0
    for mcu in range(total):
        bits += [block_bits(*blocks(mcu, i), table) for i, (_, table) in enumerate(per_mcu)]
        if (interval and (mcu + 1) % interval == 0) or mcu + 1 == total:
            text = "".join(bits)
            text += pad * (-len(text) % 8)
            scan += int("0" + text, 2).to_bytes(len(text) // 8, "big").replace(b"\xff", b"\xff\x00")
            bits = []
            if mcu + 1 < total:
                scan += bytes((0xFF, 0xD0 + (rst + rst_shift) % 8))
                rst += 1
    return head + bytes(scan) + b"\xff\xd9"


def flat(mcu, index):
    return 0, [], True


# --- acceptance ---------------------------------------------------------------------------------


def test_standard_tables_are_libjpegs():
    """The implied tables of abbreviated streams are exactly the ones Pillow/libjpeg writes."""
    ours = tables._STANDARD_DHT
    theirs = b"".join(bytes((cls << 4 | tid,)) + b"".join(TABLES[cls, tid])
                      for tid in (0, 1) for cls in (0, 1))
    assert ours == theirs


@pytest.mark.parametrize("key,data", STREAM_LIST, ids=[str(k) for k, _ in STREAM_LIST])
def test_accepts_pillow_streams(key, data):
    kind, restart, abbreviated = key
    factors = SAMPLINGS.get(kind, (1, 1))
    width, height = Image.open(io.BytesIO(data)).size
    mcus = expected_mcus(width, height, factors)
    assert validate(data) == (True, mcus, mcus, len(data), None)
    assert (b"\xff\xdd" in data) == bool(restart) and (b"\xff\xc4" in data) != abbreviated


def test_abbreviated_and_restored_streams_agree():
    full = jpeg.restore(REFERENCE)
    assert b"\xff\xc4" in full and b"\xff\xc4" not in REFERENCE
    assert validate(REFERENCE)[:3] == validate(full)[:3] == (True, 12, 12)


def test_abbreviated_streams_are_judged_with_the_tables_restore_inserts():
    """No DQT and no DHT: quantization tables 0 and 1 come back, so a component on table 2 or 3 is
    invalid (the restored stream is); a stream with a DHT but no DQT gets nothing back."""
    sof = REFERENCE.index(b"\xff\xc0")
    for table in (2, 3):
        data = bytearray(REFERENCE)
        data[sof + 4 + 6 + 3 + 2] = table  # the quantization table of component 2
        report = validate(bytes(data))
        assert not report.ok and f"quantization table {table} is used but not defined" in report.error
        assert not validate(jpeg.restore(bytes(data))).ok
        fixed = repair(bytes(data))
        assert validate(fixed).ok and decodable(fixed).size == (64, 48)
    full = jpeg.restore(REFERENCE)
    dqt_start, sof_start = full.index(b"\xff\xdb"), full.index(b"\xff\xc0")
    no_dqt = full[:dqt_start] + full[sof_start:]  # Pillow writes both DQT segments in one run
    assert b"\xff\xdb" not in no_dqt and b"\xff\xc4" in no_dqt
    assert "quantization table 0 is used but not defined" in validate(no_dqt).error
    assert validate(repair(no_dqt)).ok


@given(st.integers(0, 2**32), st.integers(1, 3))
def test_abbreviated_verdict_is_the_restored_streams(seed, edits):
    """validate(stream).ok == validate(jpeg.restore(stream)).ok for header mutations of the
    model's format, whenever restore can put the tables in."""
    rng = random.Random(seed)
    data = bytearray(REFERENCE)
    for _ in range(edits):
        i = rng.randrange(REFERENCE.index(b"\xff\xda") + 14)
        data[i] = rng.randrange(256) if rng.random() < 0.5 else data[i] ^ 1 << rng.randrange(8)
    try:
        full = jpeg.restore(bytes(data))
    except ValueError:
        return
    assert validate(bytes(data)).ok == validate(full).ok


@given(st.sampled_from(sorted(SAMPLINGS) + ["gray"]), st.integers(1, 70), st.integers(1, 50),
       st.sampled_from([0, 1, 2, 5]), st.booleans(), st.integers(0, 2**32))
def test_reference_streams_validate_and_decode(sampling, width, height, interval, abbreviated,
                                               seed):
    """Any sampling factors, edge MCUs, intervals and coefficient layouts: we agree with Pillow."""
    rng = random.Random(seed)
    factors = SAMPLINGS.get(sampling, (1, 1))
    data = reference_stream(width, height, factors, lambda mcu, i: random_block(rng), interval,
                            tables=not abbreviated, color=sampling != "gray")
    report = validate(data)
    assert report.ok, report
    assert report.mcus == expected_mcus(width, height, factors if sampling != "gray" else (1, 1))
    assert decodable(data).size == (width, height)


def test_progressive_arithmetic_and_12_bit_are_unsupported():
    progressive = pillow_stream(abbreviated=False, progressive=True)
    arithmetic = REFERENCE.replace(b"\xff\xc0", b"\xff\xc9", 1)
    twelve = REFERENCE.replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1)
    lossless = REFERENCE.replace(b"\xff\xc0", b"\xff\xc3", 1)
    for data, what in ((progressive, "progressive"), (arithmetic, "arithmetic"),
                       (twelve, "12-bit"), (lossless, "lossless")):
        report = validate(data)
        assert not report.ok and report.error.startswith(f"unsupported: {what}"), report


def test_tables_and_misc_segments_where_allowed():
    head, scan = REFERENCE.split(b"\xff\xda", 1)
    comment, app = segment(0xFE, b"made by a test"), segment(0xE5, b"x" * 40)
    sof = head.index(b"\xff\xc0")
    moved = head[:sof] + comment + head[sof:] + app + b"\xff\xff" + b"\xff\xda" + scan
    assert validate(moved).ok
    after_scan = REFERENCE[:-2] + comment + b"\xff\xd9"
    report = validate(after_scan)
    assert not report.ok and "expected EOI" in report.error and report.offset == len(REFERENCE) - 2


def test_missing_huffman_tables_default_to_annex_k_like_libjpeg():
    mjpeg_style = jpeg.restore(REFERENCE).replace(jpeg.tables()[jpeg.tables().index(b"\xff\xc4"):],
                                                  b"")
    assert b"\xff\xdb" in mjpeg_style and b"\xff\xc4" not in mjpeg_style
    assert validate(mjpeg_style).ok and decodable(mjpeg_style).size == (64, 48)


# --- rejection of one precise violation ---------------------------------------------------------


def broken(**changes) -> huffman.Report:
    args = dict(width=24, height=16, factors=(1, 1), blocks=flat, interval=2)
    args.update(changes)
    return validate(reference_stream(**args))


def test_reference_baseline_is_valid():
    assert broken()[:3] == (True, 6, 6)


@pytest.mark.parametrize("ac,message", [
    ([(15, 0)] * 3 + [(11, 3), (3, 2)], "run of 3 zeros from coefficient 61 passes coefficient 63"),
    ([(15, 0)] * 3 + [(12, 3), (5, 1)], "no AC code allowed at coefficient 62 starts with these"),
    ([(15, 0), (15, 0), (14, 1), (15, 0)], "ZRL at coefficient 48 leaves no room"),
])
def test_coefficient_index_past_63(ac, message):
    report = broken(blocks=lambda mcu, i: (0, ac, True) if mcu == 3 else flat(mcu, i))
    assert not report.ok and message in report.error and report.mcus == 3


def test_coefficient_63_and_zrl_runs_are_fine():
    blocks = [(5, [(15, 0)] * 3 + [(14, -7)], False),
              (0, [(15, 0), (15, 0), (15, 0), (14, 1)], False),
              (-3, [(15, 0), (3, 2)], True), (1, [(0, 1023), (0, -1023)], True)]
    report = broken(blocks=lambda mcu, i: blocks[mcu % 4])
    assert report.ok, report


def test_padding_must_be_one_bits():
    report = broken(pad="0", blocks=lambda mcu, i: (1, [], True))
    assert not report.ok and "padding bits after MCU 1" in report.error


def test_restart_markers_in_sequence_and_where_due():
    report = broken(rst_shift=3)
    assert not report.ok and "expected RST0" in report.error and "found RST3" in report.error
    good = reference_stream(24, 16, (1, 1), flat, interval=2)
    first = good.index(b"\xff\xd0")
    dropped = good[:first] + good[first + 2:]
    report = validate(dropped)
    assert report.error == ("entropy-coded data continues after MCU 1, where the restart interval "
                            "ends")
    assert report.offset == first and report.mcus == 2
    early = good.replace(b"\xff\xd0", b"", 1).replace(b"\xff\xd1", b"\xff\xd0\xff\xd1", 1)
    assert not validate(early).ok
    extra = good[:-2] + b"\xff\xd3\xff\xd9"
    assert "expected EOI after the last MCU, found RST3" in validate(extra).error


def test_marker_inside_an_mcu():
    data = bytearray(REFERENCE)
    first = data.index(b"\xff\xd0")
    data[first - 2:first - 2] = b"\xff\xd0"
    report = validate(bytes(data))
    assert not report.ok and "before the MCU is complete" in report.error
    assert report.offset == first - 2 and report.mcus == 0


def test_byte_stuffing():
    data = reference_stream(16, 8, (1, 1), lambda mcu, i: ((2047, -2047)[mcu], [], True))
    stuffed = data.index(b"\xff\x00", data.index(b"\xff\xda") + 14)
    assert validate(data).ok
    validator = Validator()
    assert validator.feed(data[:stuffed + 1]) and validator.feed(data[stuffed + 1:])
    assert validator.done
    unstuffed = data[:stuffed + 1] + data[stuffed + 2:]
    assert "before the MCU is complete" in validate(unstuffed).error
    assert validate(data[:stuffed] + b"\xff\xff" + data[stuffed + 1:]).offset == stuffed


def test_trailing_bytes_and_truncation():
    report = validate(REFERENCE + b"\x00")
    assert not report.ok and report.error == "trailing bytes after EOI"
    assert report.offset == len(REFERENCE) and report.mcus == 12
    truncated = validate(REFERENCE[:-1])
    assert "data ends" in truncated.error and truncated.offset == len(REFERENCE) - 1


def test_table_problems_are_named():
    full = reference_stream(16, 8, (1, 1), flat)
    dht = full.index(b"\xff\xc4")
    assert full[dht + 5:dht + 8] == b"\x00\x01\x05"  # DC table 0: code-length counts 1-3
    complete_code = full[:dht + 5] + b"\x02\x00\x04" + full[dht + 8:]  # two 1-bit codes
    assert "reserved all-1 code" in validate(complete_code).error
    twelve = full.replace(bytes(range(12)), bytes(range(1, 13)), 1)  # DC category 12
    assert "DC category 12" in validate(twelve).error
    two = full.replace(b"\x03\x01\x00\x02\x11\x03\x11", b"\x03\x01\x22\x02\x11\x03\x11")
    assert "allows 0-1" in validate(two).error


def test_header_errors_name_the_field():
    sof = REFERENCE.index(b"\xff\xc0")
    zero_width = bytearray(REFERENCE)
    zero_width[sof + 7:sof + 9] = b"\x00\x00"
    report = validate(bytes(zero_width))
    assert "width 0" in report.error and report.offset == sof + 7
    assert "not a JPEG stream" in validate(b"\x89PNG\r\n").error
    assert validate(b"").error.startswith("empty input")
    swapped = REFERENCE.replace(b"\x03\x01\x00\x02\x11\x03\x11", b"\x03\x02\x11\x01\x00\x03\x11")
    assert "component 2 where the frame header has component 1" in validate(swapped).error


# --- properties: never raise, incremental == whole, repair ----------------------------------------


def chunked(data: bytes, rng: random.Random) -> Validator:
    validator, pos = Validator(), 0
    while pos < len(data):
        size = rng.choice([1, 1, 2, 3, 4, 5, 9, 64, 4096])
        validator.feed(data[pos:pos + size])
        pos += size
    return validator


def mutate(data: bytes, rng: random.Random, edits: int) -> bytes:
    out = bytearray(data)
    for _ in range(edits):
        i = rng.randrange(len(out) + 1)
        kind = rng.randrange(6)
        if kind == 0 and i < len(out):
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out.insert(i, rng.choice([0, 0xFF, rng.randrange(256)]))
        elif kind == 2:
            del out[i:i + rng.randint(1, 3)]
        elif kind == 3:
            del out[i:]
        elif kind == 4:
            out[i:i] = rng.choice([b"\xff\xd0", b"\xff\x00", b"\xff\xff", b"\xff\xd9"])
        elif i < len(out):
            out[i] = rng.randrange(256)
    return bytes(out)


@given(st.binary(max_size=300), st.integers(0, 2**32))
def test_random_bytes_never_raise(data, seed):
    for blob in (data, REFERENCE[:REFERENCE.index(b"\xff\xda") + 14] + data, b"\xff\xd8" + data):
        report = validate(blob)
        assert not report.ok or report.offset == len(blob)
        assert chunked(blob, random.Random(seed)).report() == report
        try:
            fixed = repair(blob)
        except RepairError as exc:
            assert "no complete JPEG frame header" in str(exc)
        else:
            assert validate(fixed).ok


@given(st.sampled_from(STREAM_LIST + [(("model", 1, True), REFERENCE)] * 4), st.integers(0, 2**32),
       st.integers(1, 4))
def test_mutations_incremental_equals_whole_and_repair(item, seed, edits):
    (kind, _, _), original = item
    rng = random.Random(seed)
    data = mutate(original, rng, edits)
    report = validate(data)
    assert chunked(data, rng).report() == report
    if not report.ok:
        assert Validator().feed(data[:report.offset]), "the bytes before the first error are viable"
    try:
        fixed = repair(data)
    except RepairError:
        assert report.total_mcus == 0, "only a stream without a frame header is beyond repair"
        return
    assert validate(fixed).ok
    if report.ok:
        assert fixed == data
    size = Image.open(io.BytesIO(original)).size
    if Image.open(io.BytesIO(fixed)).size == size:  # else an edit hit the frame header's size
        assert decodable(fixed, kind if kind in SAMPLINGS else "4:2:0").size == size


@given(st.sampled_from(STREAM_LIST + [(("model", 1, True), REFERENCE)] * 4), st.data())
def test_every_prefix_is_viable_and_repairs(item, draw):
    (kind, _, _), data = item
    sof = data.index(b"\xff\xc0")
    header = sof + 2 + int.from_bytes(data[sof + 2:sof + 4], "big")
    cut = draw.draw(st.integers(header, len(data)))
    prefix = data[:cut]
    validator = Validator()
    assert validator.feed(prefix)
    assert validator.done == (cut == len(data))
    fixed = repair(prefix)
    assert fixed[:header] == data[:header] and validate(fixed).ok
    sub = kind if kind in SAMPLINGS else "4:2:0"
    assert decodable(fixed, sub).size == Image.open(io.BytesIO(data)).size


def test_repair_keeps_whole_intervals_and_fills_gray():
    data = pillow_stream(48, 32, 3, "4:4:4", restart=1)  # 6x4 MCUs of 8x8, RST after each
    cut = jpeg.restart_offsets(data)[12]  # the first two MCU rows are whole
    fixed = repair(data[:cut + 5])
    assert fixed.startswith(data[:cut]) and validate(fixed).ok
    ours = np.asarray(decodable(fixed, "4:4:4").convert("RGB")).astype(int)
    theirs = np.asarray(decodable(data, "4:4:4").convert("RGB")).astype(int)
    assert np.array_equal(ours[:16], theirs[:16])
    assert np.abs(ours[16:] - 128).max() <= 1


def test_repair_needs_a_frame_header():
    with pytest.raises(RepairError, match="no complete JPEG frame header"):
        repair(REFERENCE[:REFERENCE.index(b"\xff\xc0") + 5])


# --- the incremental API ------------------------------------------------------------------------


def test_validator_clone_done_and_errors():
    scan = REFERENCE.index(b"\xff\xda") + 14
    root = Validator()
    assert root.feed(REFERENCE[:scan]) and not root.done and root.mcus == 0
    good, bad = root.clone(), root.clone()
    assert good.feed(REFERENCE[scan:-2]) and good.mcus == 12 and not good.done
    assert not bad.feed(b"\xff\xd9")  # EOI before any MCU
    assert not bad.feed(REFERENCE[scan:]) and not bad.done  # errors are final
    assert root.mcus == 0 and root.feed(b"")
    assert good.feed(b"\xff") and good.feed(b"\xd9") and good.done
    assert good.report() == validate(REFERENCE)
    assert not good.feed(b"\x00") and not good.done


def test_single_byte_choices_match_the_stream():
    """At every byte of the scan some value keeps the prefix viable: the stream's own byte."""
    scan = REFERENCE.index(b"\xff\xda") + 14
    state = Validator()
    state.feed(REFERENCE[:scan])
    rng = random.Random(5)
    for pos in range(scan, len(REFERENCE)):
        candidates = {REFERENCE[pos], rng.randrange(256), rng.randrange(256)}
        viable = {b for b in candidates if state.clone().feed(bytes((b,)))}
        assert REFERENCE[pos] in viable
        for b in candidates - viable:
            assert not validate(REFERENCE[:pos] + bytes((b,)) + REFERENCE[pos + 1:]).ok
        state.feed(REFERENCE[pos:pos + 1])
    assert state.done


# --- exact viability: a prefix is refused as soon as nothing can follow it -----------------------

DECODE = {key: {code: symbol for symbol, code in book.items()} for key, book in BOOKS.items()}


def ac_allowed(symbol: int, k: int) -> bool:
    """An AC symbol at coefficient k keeps the block within coefficient 63 (T.81 F.1.2.2)."""
    run, size = symbol >> 4, symbol & 15
    if symbol == 0:
        return True
    if symbol == 0xF0:
        return k + 16 <= 63
    return 1 <= size <= 10 and k + run + 1 <= 64


def mcu_state(bits: str, tables: list[int]) -> str:
    """'dead', 'open' or 'complete': can `bits` begin one MCU whose blocks use the standard
    Huffman tables `tables`, then 1-bit padding to a byte boundary? Decoded bit by bit over the
    code books read from Pillow: nothing is shared with the module under test."""
    pos = 0
    for table in tables:
        k = 0
        while k < 64:
            book, code = DECODE[int(k > 0), table], ""
            while code not in book:
                if not any(c.startswith(code) and (k == 0 or ac_allowed(s, k))
                           for c, s in book.items()):
                    return "dead"
                if pos == len(bits):
                    return "open"
                code += bits[pos]
                pos += 1
            symbol = book[code]
            if k and not ac_allowed(symbol, k):
                return "dead"
            pos += symbol if k == 0 else symbol & 15
            k = 1 if k == 0 else 64 if symbol == 0 else k + (symbol >> 4) + 1
            if pos > len(bits):
                return "open"
    rest = bits[pos:]
    return "complete" if len(rest) < 8 and "0" not in rest else "dead"


def scan_header(size: int) -> bytes:
    """Headers through SOS of the model's format: abbreviated, q25 4:2:0, a RST after every MCU."""
    data = pillow_stream(size, size, 0, "4:2:0", restart=1)
    sos = data.index(b"\xff\xda")
    return data[:sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")]


@pytest.mark.parametrize("size", [16, 32])
def test_ff_inside_an_mcu_is_judged_at_once(size):
    """Inside an MCU an FF can only be data (FF 00): the FF is refused at once when eight 1-bits
    leave no valid code, and accepted when they do or when the MCU is complete (a marker). The
    sampler once got stuck on such a dead FF; here both kinds are built from random scan bytes and
    judged by an independent bit-by-bit decoder."""
    head, rng = scan_header(size), random.Random(size)
    tables = [0, 0, 0, 0, 1, 1]  # 4:2:0: four luma blocks, then Cb and Cr
    verdicts = {True: 0, False: 0}
    for _ in range(25):
        values = [rng.choice([0xFF, rng.randrange(256)]) for _ in range(40)]
        for cut in range(len(values)):
            bits = "".join(format(v, "08b") for v in values[:cut])
            before = mcu_state(bits, tables)
            if before == "dead":
                break
            expected = before == "complete" or mcu_state(bits + "1" * 8, tables) != "dead"
            prefix = head + bytes(values[:cut]).replace(b"\xff", b"\xff\x00") + b"\xff"
            validator = Validator()
            assert validator.feed(prefix) == expected, prefix[len(head):].hex(" ")
            verdicts[expected] += 1
            if not expected:  # a dead FF reads the same whatever comes after it
                tails = (b"", b"\x00", b"\xd0", b"\x00\xff\xd9")
                whole = {validate(prefix + tail) for tail in tails}
                assert whole == {validator.report()}, whole
    assert verdicts[True] and verdicts[False], verdicts


def dead_end_stream(ac_symbols: bytes, bits: str, dc_counts: bytes = b"") -> bytes:
    """One 8x8 gray block with a DHT of our own: standard DC table 0 (or `dc_counts` with no
    symbols) and an AC table 0 of 2-bit codes for `ac_symbols`."""
    dc = dc_counts or b"".join(TABLES[0, 0])
    ac = bytes([0, len(ac_symbols)] + [0] * 14) + ac_symbols
    head = (b"\xff\xd8" + segment(0xDB, b"\x00" + bytes([4] * 64)) +
            segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00") +
            segment(0xC4, b"\x00" + dc + b"\x10" + ac) + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"))
    bits += "1" * (-len(bits) % 8)
    return head + int("0" + bits, 2).to_bytes(len(bits) // 8, "big") + b"\xff\xd9"


def test_ac_tables_with_dead_ends():
    """With only runs of 1 and 2 zeros (no EOB), coefficient 63 is a dead end: a block must land
    on 64 exactly. The symbol that lands on 63 is refused as soon as its code is known."""
    two_three = b"\x11\x21"  # codes 00 and 01, then one magnitude bit each
    good = dead_end_stream(two_three, "00" + "011" + "001" * 30)  # DC 0, k 1 -> 4 -> 64
    assert validate(good).ok and decodable(good).size == (8, 8)
    dead = dead_end_stream(two_three, "00" + "001" * 30 + "00" + "1")  # k 1 -> 61 -> 63
    scan = dead.index(b"\xff\xda") + 10
    validator = Validator()
    assert validator.feed(dead[:scan + 11]) and not validator.feed(dead[scan + 11:scan + 12])
    assert "no sequence of AC codes can end the block from coefficient 63" in validate(dead).error
    odd = validate(dead_end_stream(b"\x11", "00"))  # runs of 1 from coefficient 1 reach 63, 65
    assert "AC Huffman table 0 cannot be used: no sequence of its codes ends a block" in odd.error
    empty = validate(dead_end_stream(two_three, "00", dc_counts=bytes(16)))
    assert "DC Huffman table 0 cannot be used: it holds no codes" in empty.error


def header_dead_ends() -> list[tuple[str, bytes, str]]:
    """(what, prefix, error): header bytes whose last byte leaves no valid continuation."""
    full = pillow_stream(16, 16, 0, abbreviated=False)
    sos, sof = full.index(b"\xff\xda"), full.index(b"\xff\xc0")
    dqt = full.index(b"\xff\xdb")
    chroma_dqt = full.index(b"\xff\xdb", dqt + 2)
    ac_dht = full.index(b"\xff\xc4", full.index(b"\xff\xc4") + 2)
    no_chroma_table = full[:chroma_dqt] + full[chroma_dqt + 69:sos + 2]
    return [
        ("SOS length above 14", full[:sos + 2] + b"\x80", "more than it can be"),
        ("SOF length of no component count", full[:sof + 3] + b"\x10", "does not fit a frame"),
        ("DQT length of no table count", full[:dqt + 3] + b"\x50", "whole tables of 65 bytes"),
        ("DQT zero entry", full[:dqt + 10] + b"\x00", "has a zero entry"),
        ("DHT codes past 256", full[:ac_dht + 5] + b"\x80\x81", "more than 256 codes"),
        ("SOS with a quantization table undefined", no_chroma_table,
         "quantization table 1 is used but not defined"),
    ]


@pytest.mark.parametrize("what,prefix,error", header_dead_ends(),
                         ids=[case[0] for case in header_dead_ends()])
def test_header_dead_ends_are_refused_at_their_byte(what, prefix, error):
    validator = Validator()
    assert validator.feed(prefix[:-1]) and not validator.feed(prefix[-1:])
    report = validate(prefix)
    assert error in report.error and validator.report() == report
    assert report == validate(prefix + bytes(range(256)))  # what follows changes nothing


SMALL = STREAM_LIST + [(("model", 1, True), REFERENCE)] * 3 + [
    (("4:2:0", 1, True), pillow_stream(size, size, 4)) for size in (16, 32)] * 3


@given(st.sampled_from(SMALL), st.integers(0, 2**32), st.integers(0, 3),
       st.sampled_from([b"", b"", b"\xff", b"\xff\x00", b"\xff\xff"]), st.data())
def test_no_viable_prefix_is_a_dead_end(item, seed, edits, tail, draw):
    """A prefix feed accepts always has a next byte that feed accepts (or is complete): checked on
    prefixes of valid and mutated streams, then along a short random walk of accepted bytes."""
    rng = random.Random(seed)
    data = mutate(item[1], rng, edits) if edits else item[1]
    prefix = data[:draw.draw(st.integers(0, len(data)))] + tail
    validator = Validator()
    if not validator.feed(prefix):
        return
    for _ in range(6):
        if validator.done:
            return
        following = [b for b in range(256) if validator.clone().feed(bytes((b,)))]
        assert following, f"{prefix.hex(' ')} is accepted, yet no byte can follow it"
        prefix += bytes((rng.choice(following),))
        validator.feed(prefix[-1:])


# --- command line -------------------------------------------------------------------------------


def test_cli(tmp_path, capsys):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(REFERENCE)
    bad.write_bytes(REFERENCE[:-40])
    assert huffman.main([str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok (12/12 MCUs, {len(REFERENCE)} bytes)"
    assert huffman.main([str(good), str(bad), str(tmp_path / "missing.jpg"), "--json"]) == 1
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["ok"] for r in rows] == [True, False, False]
    assert rows[1]["mcus"] < 12 and "data ends" in rows[1]["error"]
    assert "cannot read" in rows[2]["error"] and "1 valid, 2 invalid" in out.err


def test_python_m_runs_the_cli(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(REFERENCE)
    bad.write_bytes(REFERENCE[:-40])
    run = subprocess.run([sys.executable, "-m", "nanocodec.huffman", str(good), str(bad)], capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stdout.startswith(f"{good}: ok (12/12 MCUs")
    assert f"{bad}: INVALID" in run.stdout and "1 valid, 1 invalid" in run.stderr


def _state_site_problems(source: str, fields: tuple[str, ...]) -> list[str]:
    """Where the walk's positional state sites disagree with `fields`: every tuple unpacking of
    `st` and every all-positional `_State(...)` call must give each field in its place (a name
    there must be the field's own, or `_`), and a call either gives all fields or only the four
    that have no default (a fresh walk)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple) and \
                isinstance(node.value, ast.Name) and node.value.id == "st":
            names = [elt.id for elt in node.targets[0].elts]
            if len(names) != len(fields) or any(n not in ("_", f) for n, f in zip(names, fields)):
                problems.append(f"line {node.lineno}: unpacks {names}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_State":
            if not node.keywords and len(node.args) not in (4, len(fields)):
                problems.append(f"line {node.lineno}: gives {len(node.args)} of {len(fields)}")
            for arg, field in zip(node.args, fields):
                if isinstance(arg, ast.Name) and not arg.id.startswith("_") and arg.id != field:
                    problems.append(f"line {node.lineno}: {arg.id} in the place of {field}")
    return problems


def test_walk_state_sites_follow_the_state_fields():
    """The walk reads and rebuilds its state by position, for speed: a field added, removed or
    moved in _State without updating those sites must fail here, not shift values silently."""
    fields = walk._State._fields
    source = inspect.getsource(walk)
    assert _state_site_problems(source, fields) == []
    # _advance rebuilds the first three fields and copies the rest; fresh walks give four.
    assert fields[:4] == ("phase", "base", "pending", "header")
    assert set(walk._State._field_defaults) == set(fields[4:])
    # The check itself sees a field added at the end or in the middle, and a swap.
    assert _state_site_problems(source, fields + ("extra",))
    assert _state_site_problems(source, fields[:6] + ("extra",) + fields[6:])
    assert _state_site_problems(source, fields[:5] + (fields[6], fields[5]) + fields[7:])
