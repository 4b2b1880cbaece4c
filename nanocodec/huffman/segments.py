"""Header structures and segment parsers of the JPEG validator: everything outside the scan data.

Owns the immutable header a stream builds up (`_Frame`, `_Scan`, `_Header`, shared between cloned
validators), the marker names and the unsupported-process table, `_Reader` (one segment body
that may have arrived only partly), one parser per segment kind (`_PARSERS`: SOF, DHT, DQT, DRI,
SOS, APPn, COM), `_marker_problem` (what a marker alone rules out), and the Annex K tables that
streams without DHT fall back to. A parser raises `_Invalid` (with the byte offset) or
`_Truncated`; nothing else here raises. Does not own the order of markers or the entropy-coded
data (nanocodec.huffman.walk) nor the Huffman table arithmetic (nanocodec.huffman.tables).
"""
from __future__ import annotations

from typing import NamedTuple

from nanocodec.huffman.tables import (_STANDARD_DHT, _finishes, _lookahead, _room, _single,
                                      _table_problem)


class _Frame(NamedTuple):
    marker: int
    width: int
    height: int
    components: tuple[tuple[int, int, int, int], ...]  # (id, h, v, quantization table)
    columns: int  # MCUs per row
    total: int


class _Scan(NamedTuple):
    starts: tuple[list[int], ...]  # lookahead per block of the MCU, at the block start
    rests: tuple[list[int], ...]  # ... after the DC coefficient
    dc: tuple[list[int], ...]  # exact one-symbol tables per block
    ac: tuple[list[int], ...]
    rooms: tuple[list[int], ...]  # _room of each block's AC table
    finishes: tuple[int, ...]  # _finishes of each block's AC table
    keys: tuple[tuple[bytes, bytes], ...]  # (DC, AC) table of each block
    labels: tuple[str, ...]
    columns: int
    total: int
    interval: int
    start: int  # absolute offset of the SOS marker
    follow: tuple[tuple[list[int], list[int], int], ...]  # block j+1: tables, index (0: new MCU)


class _Header(NamedTuple):
    frame: _Frame | None = None
    tables: tuple[bytes | None, ...] = (None,) * 8  # DC 0-3, then AC 0-3
    quant: int = 0  # bit i set: quantization table i defined
    abbreviated: bool = True  # no DQT or DHT segment yet: judged with the tables jpeg.restore inserts
    interval: int = 0
    scan: _Scan | None = None


class _Invalid(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


class _Truncated(Exception):
    """A segment's bytes have not all arrived yet."""


_SEGMENT_NAMES = {0xC4: "DHT", 0xDB: "DQT", 0xDD: "DRI", 0xDA: "SOS", 0xFE: "COM", 0xC0: "SOF0",
                  0xC1: "SOF1"}
_UNSUPPORTED = {
    0xC2: "progressive JPEG (SOF2)", 0xC3: "lossless JPEG (SOF3)",
    0xC5: "hierarchical JPEG (SOF5)", 0xC6: "hierarchical JPEG (SOF6)",
    0xC7: "hierarchical JPEG (SOF7)", 0xC9: "arithmetic coding (SOF9)",
    0xCA: "progressive arithmetic coding (SOF10)", 0xCB: "lossless arithmetic coding (SOF11)",
    0xCC: "arithmetic coding (DAC)", 0xCD: "hierarchical arithmetic coding (SOF13)",
    0xCE: "hierarchical arithmetic coding (SOF14)", 0xCF: "hierarchical arithmetic coding (SOF15)",
    0xDC: "DNL marker (height defined after the scan)", 0xDE: "hierarchical JPEG (DHP)",
    0xDF: "hierarchical JPEG (EXP)",
}


def _marker_name(marker: int) -> str:
    if 0xD0 <= marker <= 0xD7:
        return f"RST{marker - 0xD0}"
    if 0xE0 <= marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    named = {0xD8: "SOI", 0xD9: "EOI", 0x01: "TEM", 0x00: "stuffed byte FF 00", **_SEGMENT_NAMES}
    return named.get(marker, f"marker FF {marker:02X}")


_NAMES = tuple(map(_marker_name, range(256)))


class _Reader:
    """Reads one segment body, which may have arrived only partly."""

    __slots__ = ("body", "size", "pos", "offset", "name")

    def __init__(self, body: bytes, size: int, offset: int, name: str) -> None:
        self.body, self.size, self.pos, self.offset, self.name = body, size, 0, offset, name

    def peek(self, n: int) -> bytes:
        """The next n bytes as far as they have arrived, without taking them."""
        if self.pos + n > self.size:
            self.bad_length("is too short for its contents")
        return self.body[self.pos:self.pos + n]

    def take(self, n: int) -> bytes:
        out = self.peek(n)
        if len(out) < n:
            raise _Truncated
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def word(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def fail(self, message: str, back: int = 1) -> None:
        raise _Invalid(self.offset + self.pos - back, f"{self.name}: {message}")

    def bad_length(self, problem: str) -> None:
        raise _Invalid(self.offset - 2, f"{self.name} segment length {self.size + 2} {problem}")

    def exact(self, expected: int) -> None:
        if self.size != expected:
            self.bad_length(f"does not match its contents, which need {expected + 2}")


# Segment parsers: (reader, header, marker) -> new header. Each check runs as soon as the bytes
# it needs are known (the segment length first), and in byte order, so a partial segment fails
# as soon as no continuation can make it valid, and exactly where the whole one would.


def _table(header: _Header, index: int) -> bytes | None:
    """Huffman table `index` (DC 0-3, AC 4-7); slots 0-1 default to the Annex K tables."""
    return header.tables[index] or (_STANDARD_TABLES[index] if index % 4 < 2 else None)


# The quantization tables nanocodec.jpeg.restore inserts into a stream with no DQT and no DHT
# (luma 0, chroma 1); its Huffman tables are the Annex K ones that _table falls back to.
_RESTORED_QUANT = 0b11


def _quant_tables(header: _Header) -> int:
    """Bit i set: quantization table i is defined, or will be once the stream is restored."""
    return _RESTORED_QUANT if header.abbreviated else header.quant


def _marker_problem(header: _Header, marker: int) -> str | None:
    """Why a frame or scan header cannot start here, which its marker alone tells."""
    frame = header.frame
    if marker in (0xC0, 0xC1):
        return "a second frame header (SOF); only one frame is allowed" if frame else None
    if marker != 0xDA:
        return None
    if frame is None:
        return "SOS before the frame header (SOF)"
    missing = [c[3] for c in frame.components if not _quant_tables(header) >> c[3] & 1]
    if missing:
        restored = " (an abbreviated stream gets tables 0 and 1 back from jpeg.restore)" if header.abbreviated else ""
        return f"quantization table {missing[0]} is used but not defined{restored}"
    for kind, name in ((0, "DC"), (4, "AC")):
        problems = []
        for slot in range(2 if frame.marker == 0xC0 else 4):
            key = _table(header, kind + slot)
            problem = "not defined" if key is None else _table_problem(key, dc=not kind)
            if problem is None:
                break
            problems.append(f"table {slot}: {problem}")
        else:
            return f"SOS: no {name} Huffman table can be used ({'; '.join(problems)})"
    return None


def _skip(r: _Reader, header: _Header, marker: int) -> _Header:
    r.take(r.size)
    return header


def _app0(r: _Reader, header: _Header, marker: int) -> _Header:
    if r.size >= 14 and r.take(5) == b"JFIF\0":
        version = r.byte()
        if version != 1:
            r.fail(f"unknown JFIF major version {version} (expected 1)")
    r.take(r.size - r.pos)
    return header


def _dqt(r: _Reader, header: _Header, marker: int) -> _Header:
    if r.size % 65:
        if any((r.size - 129 * wide) % 65 == 0 for wide in range(1, r.size // 129 + 1)):
            raise _Invalid(r.offset - 2, f"unsupported: 16-bit quantization tables (12-bit "
                                         f"JPEG), as DQT segment length {r.size + 2} implies")
        r.bad_length("does not hold whole tables of 65 bytes")
    quant = header.quant
    while r.pos < r.size:
        kind = r.byte()
        if kind >> 4 == 1:
            raise _Invalid(r.offset + r.pos - 1,
                           "unsupported: 16-bit quantization table (12-bit JPEG)")
        if kind >> 4 or kind & 15 > 3:
            r.fail(f"bad precision/table byte 0x{kind:02X}")
        values = r.peek(64)
        if 0 in values:
            r.fail(f"quantization table {kind & 15} has a zero entry", -values.index(0))
        r.take(64)
        quant |= 1 << (kind & 15)
    return header._replace(quant=quant, abbreviated=False)


def _dht(r: _Reader, header: _Header, marker: int) -> _Header:
    if 0 < r.size < 17:
        r.bad_length("is too short for its contents")
    tables = list(header.tables)
    while r.pos < r.size:
        kind = r.byte()
        if kind >> 4 > 1 or kind & 15 > 3:
            r.fail(f"bad class/table byte 0x{kind:02X}")
        counts, codes = r.peek(16), 0
        for count in counts:
            codes += count
            if codes > 256:
                r.fail("table defines more than 256 codes", 0)
            r.peek(16 + codes)
        left = r.size - r.pos - 16 - codes
        if len(counts) == 16 and 0 < left < 17:
            r.bad_length(f"leaves {left} bytes after a table, too few for another")
        r.take(16)
        tables[(kind >> 4) * 4 + (kind & 15)] = counts + r.take(codes)
    return header._replace(tables=tuple(tables), abbreviated=False)


def _dri(r: _Reader, header: _Header, marker: int) -> _Header:
    r.exact(2)
    return header._replace(interval=r.word())


def _sof(r: _Reader, header: _Header, marker: int) -> _Header:
    if r.size not in (9, 12, 15, 18):  # 6 bytes, then 3 for each of 1-4 components
        if r.size > 18 and r.size % 3 == 0:
            raise _Invalid(r.offset - 2, f"unsupported: {(r.size - 6) // 3} components (needs "
                                         "several scans)")
        r.bad_length("does not fit a frame header of 1-4 components")
    precision = r.byte()
    if precision == 12:
        raise _Invalid(r.offset, "unsupported: 12-bit samples")
    if precision != 8:
        r.fail(f"sample precision {precision}, expected 8")
    height, width = r.word(), r.word()
    if height == 0:
        raise _Invalid(r.offset + 1, "unsupported: height 0 (defined later by a DNL marker)")
    if width == 0:
        r.fail("image width 0", 2)
    count = r.byte()
    if count == 0:
        r.fail("no components")
    r.exact(6 + 3 * count)
    components: list[tuple[int, int, int, int]] = []
    blocks = 0
    for i in range(count):
        cid = r.byte()
        if any(c[0] == cid for c in components):
            r.fail(f"component id {cid} appears twice")
        factors = r.byte()
        h, v = factors >> 4, factors & 15
        if not (1 <= h <= 4 and 1 <= v <= 4):
            r.fail(f"component {cid} has sampling factors {h}x{v}, each must be 1-4")
        blocks += h * v
        if count > 1 and blocks + count - 1 - i > 10:  # each later component adds a block
            raise _Invalid(r.offset + 6, "unsupported: an interleaved MCU of more than 10 "
                                         "blocks (needs several scans)")
        table = r.byte()
        if table > 3:
            r.fail(f"component {cid} uses quantization table {table}, the limit is 3")
        components.append((cid, h, v, table))
    hmax, vmax = (8 * max(c[1] for c in components), 8 * max(c[2] for c in components))
    if count == 1:  # a single-component scan is not interleaved: its MCU is one 8x8 block
        hmax = vmax = 8
    columns = -(-width // hmax)
    frame = _Frame(marker, width, height, tuple(components), columns, columns * -(-height // vmax))
    return header._replace(frame=frame)


def _sos(r: _Reader, header: _Header, marker: int) -> _Header:
    frame = header.frame  # _marker_problem made sure of it, and of usable tables
    need = len(frame.components)
    if r.size != 4 + 2 * need:
        if r.size % 2 == 0 and 1 <= (r.size - 4) // 2 < need:
            raise _Invalid(r.offset - 2, f"unsupported: multi-scan sequential JPEG (the SOS "
                                         f"segment length {r.size + 2} codes "
                                         f"{(r.size - 4) // 2} of {need} components)")
        r.bad_length(f"does not fit the frame's {need} components, which need {2 * need + 6}")
    count = r.byte()
    if count != need:
        r.fail(f"{count} components in the scan, where the frame and the segment length have "
               f"{need}")
    limit = 1 if frame.marker == 0xC0 else 3
    dc_keys, ac_keys = [], []
    for cid, *_ in frame.components:
        selector = r.byte()
        if selector != cid:
            r.fail(f"component {selector} where the frame header has component {cid}")
        tables = r.byte()
        for slot, kind in ((tables >> 4, 0), (tables & 15, 4)):
            if slot > limit:
                r.fail(f"component {cid} selects Huffman table {slot}, this process allows 0-"
                       f"{limit}")
            key = _table(header, kind + slot)
            what = f"{'AC' if kind else 'DC'} Huffman table {slot}"
            if key is None:
                r.fail(f"{what} is not defined")
            problem = _table_problem(key, dc=not kind)
            if problem:
                r.fail(f"{what} cannot be used: {problem}")
            (ac_keys if kind else dc_keys).append(key)
    for field, expected in (("Ss", 0), ("Se", 63), ("Ah/Al", 0)):
        value = r.byte()
        if value != expected:
            r.fail(f"not a sequential scan: {field} is {value}, expected {expected}")
    keys, labels = [], []
    for (cid, h, v, _), dc, ac in zip(frame.components, dc_keys, ac_keys):
        repeat = h * v if count > 1 else 1
        keys += [(dc, ac)] * repeat
        labels += [f"component {cid} block {i}" for i in range(repeat)]
    starts, rests = zip(*(_lookahead(dc, ac) for dc, ac in keys))
    follow = tuple((starts[i], rests[i], i) for i in range(1, len(keys)))
    scan = _Scan(starts, rests, tuple(_single(dc) for dc, _ in keys),
                 tuple(_single(ac) for _, ac in keys), tuple(_room(ac) for _, ac in keys),
                 tuple(_finishes(ac) for _, ac in keys),
                 tuple(keys), tuple(labels), frame.columns,
                 frame.total, header.interval, r.offset - 4, follow + ((starts[0], rests[0], 0),))
    return header._replace(scan=scan)


# The longest a segment can be, where that is below 256: SOF of 4 components, SOS of 4, DRI.
_SHORT_SEGMENTS = {0xC0: 20, 0xC1: 20, 0xDA: 14, 0xDD: 4}

_PARSERS = {0xC0: _sof, 0xC1: _sof, 0xC4: _dht, 0xDA: _sos, 0xDB: _dqt, 0xDD: _dri, 0xFE: _skip,
            **{m: _skip for m in range(0xE1, 0xF0)}, 0xE0: _app0}

_STANDARD_TABLES = _dht(_Reader(_STANDARD_DHT, len(_STANDARD_DHT), 0, "DHT"), _Header(),
                        0xC4).tables
