"""Validate, incrementally check and repair the Huffman-coded scan of sequential JPEG streams.

Owns `validate` (one verdict for a whole byte string), `Validator` (the same check fed piece by
piece and cloned cheaply, for samplers that must know when a prefix can no longer become a valid
file), `repair` (turn a broken stream into a valid one of the same size) and the
`python -m nanocodec.huffman FILE... [--json]` checker. Pure Python: it walks markers, segments
and every Huffman code of every block the way a decoder does, but never computes coefficients or
pixels (Pillow does that in nanocodec.jpeg) and never encodes images.

Scope: baseline and extended sequential Huffman JPEG (SOF0/SOF1, 8-bit samples) with one
interleaved scan of all components, any sampling factors, image size and restart interval.
Streams without DHT use the standard tables of ITU T.81 Annex K, as libjpeg does. Progressive,
arithmetic, lossless, hierarchical, 12-bit and multi-scan streams are reported as
"unsupported: ...". Nothing here raises on bad input except `repair`, which raises `RepairError`
when there is no frame header to keep.

Exactness: each check runs as soon as the bytes it needs have arrived, so the error is found at
the first byte after which no continuation could make the stream valid (a segment length no
contents fit, an FF inside an MCU that eight 1-bits cannot continue, a code that leads into a
block that cannot end), and it reads the same whether the bytes came whole or in pieces.

Speed: each Huffman table gets 16-bit lookahead tables whose entries decode as many whole
symbols as fit in the window (often a whole block), so the bit loop runs about once per block.
Rare cases (long codes, runs near coefficient 63, the end of the data) go through an exact
one-symbol path, which is also the only place errors are diagnosed.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = ["Report", "RepairError", "Validator", "repair", "validate", "main"]


class Report(NamedTuple):
    ok: bool
    mcus: int  # whole MCUs decoded before the first error
    total_mcus: int  # MCUs the frame header asks for (0 before a frame header is read)
    offset: int  # byte offset of the first error, or len(data) when ok
    error: str | None  # what was expected and what was found; None when ok


class RepairError(ValueError):
    """The input has no complete frame header, so there is no image size to repair towards."""


# The DHT body libjpeg writes for the Annex K.3 tables: DC 0, AC 0, DC 1, AC 1.
_STANDARD_DHT = bytes.fromhex(
    "0000010501010101010100000000000000000102030405060708090a0b100002010303020403050504040000017d01"
    "020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728"
    "292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788"
    "898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9da"
    "e1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa010003010101010101010101000000000000010203040506070809"
    "0a0b1100020102040403040705040400010277000102031104052131061241510761711322328108144291a1b1c109"
    "233352f0156272d10a162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a63"
    "6465666768696a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6"
    "b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9fa"
)

# Lookahead entries pack `bits used | advance << 5`; the advance moves the coefficient index k
# (0 = block start, 64 = block full). An EOB adds _EOB to it; _INVALID forces the exact path.
_EOB = 1024
_INVALID = 2047 << 5

_SOI, _HEADER, _SCAN, _TAIL, _DONE = range(5)


# ---------------------------------------------------------------------------------------------
# Huffman tables. A table is keyed by its DHT bytes: 16 code counts, then the symbols.


def _table_problem(key: bytes, dc: bool) -> str | None:
    """Why a DHT table cannot be used by a scan, or None. Checked for the tables a scan selects,
    as libjpeg does: the all-1 code of every length stays reserved (libjpeg rejects tables that
    use it), and a DC table may only hold the difference categories 0-11 of 8-bit samples. A
    table that cannot code a single block (no DC codes; no AC codes that end a block) could only
    fail on the first block, so it is refused here too."""
    code = 0
    for length, count in enumerate(key[:16], 1):
        code += count
        if code >= 1 << length:
            return f"its {length}-bit codes run into the reserved all-1 code"
        code <<= 1
    if dc and not key[16:]:
        return "it holds no codes"
    if dc and max(key[16:]) > 11:
        return f"it holds DC category {max(key[16:])}, above 11"
    if not dc and not _finishes(key) >> 1 & 1:
        return "no sequence of its codes ends a block"
    return None


@functools.lru_cache(maxsize=64)
def _codes(key: bytes) -> tuple[tuple[int, int, int], ...]:
    """Canonical (code, length, symbol) triples in code order (T.81 Figures C.1-C.3)."""
    out, code, index = [], 0, 16
    for length, count in enumerate(key[:16], 1):
        for _ in range(count):
            out.append((code, length, key[index]))
            code += 1
            index += 1
        code <<= 1
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _single(key: bytes) -> list[int]:
    """16-bit window -> `length << 8 | symbol` of the code it starts with, or -1."""
    table: list[int] = []
    for _, length, symbol in _codes(key):
        table += [length << 8 | symbol] * (1 << (16 - length))
    return table + [-1] * (65536 - len(table))


_ALL_FINISH = (1 << 65) - 2  # coefficients 1-64: any block can still end


@functools.lru_cache(maxsize=64)
def _finishes(ac_key: bytes) -> int:
    """Bit k set: AC codes of this table can end a block whose next coefficient is k (bit 64: the
    block is full). That is every k in 1-64 (_ALL_FINISH) for a table with an EOB or a run-0
    code, as encoders write them; in a table with holes some symbols lead into dead ends."""
    symbols = set(ac_key[16:])
    if not symbols.isdisjoint(range(11)):  # EOB, or a run 0 that can always step to the end
        return _ALL_FINISH
    ends = 1 << 64
    for k in range(63, 0, -1):
        if any(_allowed(symbol, ends) >> k & 1 for symbol in symbols):
            ends |= 1 << k
    return ends


def _allowed(symbol: int, finishes: int) -> int:
    """Bit k set: the AC symbol may be decoded at coefficient k: it keeps within coefficient 63 (a
    ZRL leaves room for the coefficient after it) and lands where the block can still end."""
    run, size = symbol >> 4, symbol & 15
    if symbol == 0:
        return (1 << 64) - 2
    if symbol == 0xF0:
        return finishes >> 16 & ((1 << 48) - 1)
    if 1 <= size <= 10:
        return finishes >> (run + 1) & ((1 << (64 - run)) - 1)
    return 0


def _ac_runs(key: bytes) -> tuple[list[int], ...]:
    """runs[w][x]: the AC symbols whose codes lie inside the w-bit window x, summed greedily.

    Built from narrower windows so each level costs one pass. A symbol that needs the exact path
    (undefined symbols, categories past 10) ends the run, and so does a ZRL with nothing after it
    in the window: a ZRL must be followed by a coefficient, which only the exact path can check.
    A table with holes (see _finishes) gets no runs: all its symbols take the exact path.
    """
    if _finishes(key) != _ALL_FINISH:
        return tuple([0] * (1 << width) for width in range(17))
    codes = _codes(key)
    runs: list[list[int]] = [[0]]
    for width in range(1, 17):
        row: list[int] = []
        for _, length, symbol in codes:
            if length > width:
                break
            run, size = symbol >> 4, symbol & 15
            span = 1 << (width - length)
            if symbol == 0:
                row += [length | _EOB << 5] * span
            elif size > 10 or (size == 0 and run != 15):
                row += [0] * span
            else:
                used = length + size
                head = used | (run + 1 if size else 16) << 5
                if used >= width:
                    row += [0 if size == 0 else head] * span
                elif size:
                    row += [x + head for x in runs[width - used]] * (1 << size)
                else:
                    row += [x and x + head for x in runs[width - used]]
        row += [0] * ((1 << width) - len(row))
        runs.append(row)
    return tuple(runs)


@functools.lru_cache(maxsize=8)
def _lookahead(dc_key: bytes, ac_key: bytes) -> tuple[list[int], list[int]]:
    """Lookahead tables for a block start (the DC symbol, its magnitude bits, then AC symbols)
    and for the rest of a block, past its DC coefficient.

    DC tables reach here checked (categories 0-11), so every DC code is a valid symbol. As k = 0
    is known at a block start, its entries that fill the block exactly are marked as ended (like
    an EOB) and those that run past coefficient 63 go to the exact path. Equal entries share one
    int object, which keeps a pair of tables near 1 MB.
    """
    runs = _ac_runs(ac_key)
    start: list[int] = []
    for _, length, size in _codes(dc_key):
        span = 1 << (16 - length)
        used = length + size
        if used >= 16:
            start += [used | 1 << 5] * span
        else:
            start += [x + (used | 1 << 5) for x in runs[16 - used]] * (1 << size)
    start += [_INVALID] * (65536 - len(start))
    pool: dict[int, int] = {}
    start = [pool.setdefault(e, e) if e >> 5 < 64 or _EOB < e >> 5 < _EOB + 64 else
             (e & 31 | (_EOB + 1) << 5) if e >> 5 == 64 else _INVALID for e in start]
    rest = [pool.setdefault(x, x) if x else _INVALID for x in runs[16]]
    return start, rest


@functools.lru_cache(maxsize=8)
def _room(ac_key: bytes) -> list[int]:
    """room[1 << m | p]: bit k set when some AC code that starts with the m bits p is allowed at
    coefficient k (see _allowed: EOB at any k, ZRL up to 47, run r up to 63 - r, for tables
    without holes). The set shrinks as bits are added, so one look at the longest known proper
    prefix of a code tells whether any shorter one was hopeless.
    """
    finishes = _finishes(ac_key)
    room = [0] * 65536
    for code, length, symbol in _codes(ac_key):
        allowed = _allowed(symbol, finishes)
        for m in range(1, length):
            room[1 << m | code >> (length - m)] |= allowed
    return room


def _symbol(acc: int, nbits: int, k: int, single: list[int], room: list[int],
            finishes: int) -> tuple[int, int, str | None]:
    """Decode one symbol exactly: (new k, bits used, error); bits used is -1 when bits are missing.

    The window is zero-padded past `nbits`: canonical codes fill the window space from 0 up, so
    a zero-padded prefix that matches no code cannot be completed by any later bits either. For
    AC codes the known bits must also still lead to a code allowed at k; checking that on the
    longest known proper prefix gives the same verdict however many bits have arrived.
    """
    window = ((acc << 16) >> nbits) & 0xFFFF
    entry = single[window]
    if k:
        known = min((entry >> 8) - 1 if entry >= 0 else 15, nbits)
        if known and not room[1 << known | window >> (16 - known)] >> k & 1:
            return 0, 0, f"invalid Huffman code: no AC code allowed at coefficient {k} starts " \
                         "with these bits"
    if entry < 0:
        return 0, 0, f"invalid Huffman code in the {'AC' if k else 'DC'} table"
    length, symbol = entry >> 8, entry & 255
    if length > nbits:
        return 0, -1, None
    if not k:
        size, new_k = symbol, 1
    else:
        run, size = symbol >> 4, symbol & 15
        if size > 10:
            return 0, 0, f"AC coefficient category {size} exceeds 10 (8-bit samples)"
        if size:
            new_k = k + run + 1
            if new_k > 64:
                return 0, 0, f"a run of {run} zeros from coefficient {k} passes coefficient 63"
        elif run == 15:
            new_k = k + 16
            if new_k > 63:
                return 0, 0, f"ZRL at coefficient {k} leaves no room for the coefficient after it"
        elif run:
            return 0, 0, f"AC symbol 0x{symbol:02X} is undefined in sequential JPEG"
        else:
            new_k = _EOB + k
        if new_k < 64 and not finishes >> new_k & 1:
            return 0, 0, f"no sequence of AC codes can end the block from coefficient {new_k}"
    if length + size > nbits:
        return 0, -1, None
    return new_k, length + size, None


# ---------------------------------------------------------------------------------------------
# Header structures (immutable, shared between cloned validators).


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


class _State(NamedTuple):
    phase: int
    base: int  # absolute offset of pending[0]
    pending: bytes  # bytes seen but not consumed: a partial segment or marker
    header: _Header
    mcus: int = 0
    block: int = 0  # block index inside the MCU
    k: int = 0  # next coefficient of that block; 0 = the DC coefficient
    acc: int = 0  # unconsumed entropy bits are the low `nbits` bits of acc
    nbits: int = 0
    left: int = 0  # MCUs still to decode in this restart interval
    rst: int = 0  # number of the next RST marker
    seg_start: int = 0  # absolute offset where the current restart interval's data starts
    stuffed: tuple[int, ...] = ()  # unstuffed byte indices of this interval's FF 00 pairs
    error: str | None = None
    error_at: int = 0


_START = _State(_SOI, 0, b"", _Header())


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


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# The walk. `_markers` handles everything outside the scan, `_scan` the entropy-coded data. Both
# take (state, data, pos, final) where data[0] sits at state.base, and return (state, pos): they
# stop at a phase change, at an error, or when the rest of `data` cannot be judged yet (then
# `final` turns that into a truncation error). validate and Validator.feed share this walk.


def _markers(st: _State, data: bytes, pos: int, final: bool) -> tuple[_State, int]:
    phase, header, base, end = st.phase, st.header, st.base, len(data)
    start, what = pos, "marker"
    try:
        while True:
            start, what = pos, "marker"
            if pos == end:
                if final and phase != _DONE:
                    raise _Invalid(base + end, {
                        _SOI: "empty input: a JPEG stream starts with SOI (FF D8)",
                        _HEADER: "data ends before the scan: the header is incomplete",
                        _TAIL: "data ends after the last MCU: EOI (FF D9) is missing"}[phase])
                break
            if phase == _DONE:
                raise _Invalid(base + pos, "trailing bytes after EOI")
            if phase == _SOI:
                if data[pos] != 0xFF or pos + 1 < end and data[pos + 1] != 0xD8:
                    shown = data[pos:pos + 2].hex(" ").upper() if data[pos] == 0xFF else \
                        f"{data[pos]:02X}"
                    raise _Invalid(base + pos, f"not a JPEG stream: expected SOI (FF D8), found "
                                               f"{shown}")
                if pos + 1 == end:
                    raise _Truncated
                phase, pos = _HEADER, pos + 2
                continue
            if data[pos] != 0xFF:
                raise _Invalid(base + pos, f"expected a marker (FF xx), found byte "
                                           f"{data[pos]:02X}")
            q = pos + 1
            while q < end and data[q] == 0xFF:
                q += 1  # fill bytes may precede any marker
            if q == end:
                start = end - 1  # keep one 0xFF: the fill bytes before it change nothing
                raise _Truncated
            marker = data[q]
            if phase == _TAIL:
                if marker != 0xD9:
                    raise _Invalid(base + q - 1, f"expected EOI after the last MCU, found "
                                                 f"{_NAMES[marker]}")
                phase, pos = _DONE, q + 1
                continue
            parse = _PARSERS.get(marker)
            if parse is None:
                if marker in _UNSUPPORTED:
                    raise _Invalid(base + q - 1, f"unsupported: {_UNSUPPORTED[marker]}")
                standalone = marker in (0xD9, 0xD8, 0x01, 0x00, *range(0xD0, 0xD8))
                where = "before the scan" if standalone else "(reserved)"
                raise _Invalid(base + q - 1, f"unexpected {_NAMES[marker]} {where}")
            problem = _marker_problem(header, marker)
            if problem:
                raise _Invalid(base + q - 1, problem)
            if q + 1 < end and data[q + 1] and marker in _SHORT_SEGMENTS:
                raise _Invalid(base + q + 1, f"{_NAMES[marker]} segment length is at least "
                                             f"{data[q + 1] << 8}, more than it can be (at most "
                                             f"{_SHORT_SEGMENTS[marker]})")
            if q + 2 >= end:
                raise _Truncated
            length = data[q + 1] << 8 | data[q + 2]
            name = _NAMES[marker]
            if length < 2:
                raise _Invalid(base + q + 1, f"{name} segment length {length} is below 2")
            stop = q + 1 + length
            what = f"{name} segment"
            header = parse(_Reader(data[q + 3:stop], length - 2, base + q + 3, name), header,
                           marker)
            if stop > end:
                raise _Truncated
            pos = stop
            if marker == 0xDA:
                scan = header.scan
                left = min(scan.interval, scan.total) if scan.interval else scan.total
                return _State(_SCAN, base, b"", header, left=left, seg_start=base + pos), pos
    except _Truncated:
        if final:
            return st._replace(phase=phase, header=header, error=f"data ends inside the {what}",
                               error_at=base + end), start
    except _Invalid as exc:
        return st._replace(phase=phase, header=header, error=str(exc), error_at=exc.offset), start
    return st._replace(phase=phase, header=header), start


def _raw_offset(seg_start: int, stuffed: tuple[int, ...], index: int) -> int:
    """Absolute offset of the index-th unstuffed byte of the interval starting at seg_start."""
    return seg_start + index + sum(1 for s in stuffed if s < index)


def _where(scan: _Scan, mcu: int, block: int) -> str:
    row, column = divmod(mcu, scan.columns)
    return f"MCU {mcu} (row {row}, column {column}), {scan.labels[block]}"


def _after(mcus: int, total: int) -> str:
    return f"after MCU {mcus - 1}, where the {'scan' if mcus == total else 'restart interval'} ends"


def _scan(st: _State, data: bytes, pos: int, final: bool) -> tuple[_State, int]:
    scan = st.header.scan
    starts, rests, total, interval = scan.starts, scan.rests, scan.total, scan.interval
    base, end = st.base, len(data)
    _, _, _, header, mcus, j, k, acc, nbits, left, rst, seg_start, stuffed, _, _ = st
    ff = data.find(b"\xff", pos)
    if ff < 0:
        ff = end
    follow = scan.follow
    a = rests[j]
    t = a if k else starts[j]
    error, error_at = None, 0
    while True:
        while left:
            if nbits < 27:  # the longest symbol: a 16-bit code and 11 magnitude bits
                if pos < ff:
                    stop = pos + 32 if pos + 32 < ff else ff
                    acc = (acc & ((1 << nbits) - 1)) << ((stop - pos) << 3) | int.from_bytes(
                        data[pos:stop], "big")
                    nbits += (stop - pos) << 3
                    pos = stop
                    if nbits < 27:
                        continue
                elif ff + 1 < end and not data[ff + 1]:  # FF 00 stands for a data byte FF
                    stuffed += (base + pos - seg_start - len(stuffed),)
                    acc = (acc & ((1 << nbits) - 1)) << 8 | 0xFF
                    nbits += 8
                    pos += 2
                    ff = data.find(b"\xff", pos)
                    if ff < 0:
                        ff = end
                    continue
            e = t[((acc << 16) >> nbits) & 0xFFFF]
            n = e & 31
            nk = k + (e >> 5)
            if nk < 64 and n <= nbits:  # the block goes on
                nbits -= n
                k = nk
                t = a
                continue
            if not (1024 < nk < 1088 and n <= nbits):  # 1024 = _EOB: the block ended validly
                nk, n, why = _symbol(acc, nbits, k, (scan.ac if k else scan.dc)[j], scan.rooms[j],
                                    scan.finishes[j])
                if why:
                    unstuffed = base + pos - seg_start - len(stuffed) - ((nbits + 7) >> 3)
                    error = f"{_where(scan, mcus, j)}: {why}"
                    error_at = _raw_offset(seg_start, stuffed, unstuffed)
                    break
                if n < 0:  # this symbol needs bits that are not here
                    if pos < end:  # data[pos] is an FF without its 00 (yet)
                        # Inside an MCU an FF can only be a stuffed data byte: what FF 00 would
                        # meet here is the verdict on the FF, whatever follows it.
                        probe, _ = _scan(_State(_SCAN, base + pos, b"", header, mcus, j, k, acc,
                                                nbits, left, rst, seg_start, stuffed),
                                         b"\xff\x00", 0, False)
                        error, error_at = probe.error, probe.error_at
                        if error is None and pos + 1 < end:
                            error = f"{_where(scan, mcus, j)}: found FF {data[pos + 1]:02X} " \
                                    "before the MCU is complete (only FF 00 may appear inside " \
                                    "an MCU)"
                            error_at = base + pos
                    if error is None and final:
                        error, error_at = f"data ends inside {_where(scan, mcus, j)}", base + end
                    break
                if nk < 64:
                    nbits -= n
                    k = nk
                    t = a
                    continue
            nbits -= n
            k = 0
            t, a, j = follow[j]
            if not j:
                mcus += 1
                left -= 1
        if left:
            break
        # The restart interval (or the scan) is complete: pad with 1-bits, then a marker.
        pad = nbits & 7
        if ((acc >> (nbits - pad)) + 1) & ((1 << pad) - 1):  # the pad bits are not all 1
            error = f"padding bits {_after(mcus, total)} are not all 1"
            used = base + pos - seg_start - len(stuffed) - (nbits >> 3)
            error_at = _raw_offset(seg_start, stuffed, used - 1)
            break
        if nbits > pad:
            error = f"entropy-coded data continues {_after(mcus, total)}"
            used = base + pos - seg_start - len(stuffed) - (nbits >> 3)
            error_at = _raw_offset(seg_start, stuffed, used)
            break
        acc = nbits = 0
        if pos < ff:
            error, error_at = f"entropy-coded data continues {_after(mcus, total)}", base + pos
            break
        q = pos + 1
        while q < end and data[q] == 0xFF:
            q += 1
        if q >= end:
            if final:
                wanted = f"RST{rst}" if mcus < total else "EOI"
                error, error_at = f"data ends {_after(mcus, total)}; expected {wanted}", base + end
            elif q == end:
                pos = end - 1  # keep one 0xFF: the fill bytes before it change nothing
            break
        marker = data[q]
        if not marker:
            error, error_at = f"entropy-coded data continues {_after(mcus, total)}", base + q - 1
            break
        if mcus == total:
            return st._replace(phase=_TAIL, mcus=mcus, block=0, k=0, acc=0, nbits=0, left=0,
                               rst=rst), pos
        if marker != 0xD0 + rst:
            error = f"expected RST{rst} {_after(mcus, total)}, found {_NAMES[marker]}"
            error_at = base + q - 1
            break
        rst = (rst + 1) & 7
        pos = q + 1
        seg_start = base + pos
        stuffed = ()
        left = interval if total - mcus > interval else total - mcus
        ff = data.find(b"\xff", pos)
        if ff < 0:
            ff = end
    return _State(_SCAN, base, b"", header, mcus, j, k, acc, nbits, left, rst, seg_start, stuffed,
                  error, error_at), pos


def _advance(st: _State, chunk: bytes, final: bool) -> _State:
    """Consume `chunk` after what `st` has seen; with `final`, the stream ends after it."""
    if st.error is not None:
        return st
    data = st.pending + chunk if st.pending else chunk
    pos = 0
    while True:
        phase = st.phase
        st, pos = (_scan if phase == _SCAN else _markers)(st, data, pos, final)
        if st.error is not None or (st.phase == _SCAN) == (phase == _SCAN):
            break
    # Built directly: NamedTuple._replace would double the cost of a one-token feed.
    return tuple.__new__(_State, (st.phase, st.base + pos, b"" if st.error else data[pos:]) +
                         st[3:])


def _report(st: _State) -> Report:
    frame = st.header.frame
    total = frame.total if frame else 0
    if st.error is not None:
        return Report(False, st.mcus, total, st.error_at, st.error)
    return Report(True, st.mcus, total, st.base + len(st.pending), None)


# ---------------------------------------------------------------------------------------------
# Public API.


def validate(data: bytes) -> Report:
    """Check a whole JPEG stream (abbreviated or complete) the way a strict decoder would."""
    return _report(_advance(_START, bytes(data), True))


class Validator:
    """Incremental `validate`: feed bytes in pieces of any size; clone to try alternatives.

    The state is one immutable tuple, so `clone()` is O(1) and a sampler can test many candidate
    tokens from one prefix. `feed` is exact: it returns False at the first byte after which no
    continuation can give a valid stream (so a sampler never takes a dead end), and from then on.
    An FF inside an MCU, for one, is judged at once: only a stuffed FF 00 could follow it there.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _START

    def feed(self, chunk: bytes) -> bool:
        """Append bytes; True while everything so far is a prefix of some valid stream."""
        self._state = st = _advance(self._state, bytes(chunk), False)
        return st.error is None

    def clone(self) -> Validator:
        twin = Validator.__new__(Validator)
        twin._state = self._state
        return twin

    @property
    def viable(self) -> bool:
        return self._state.error is None

    @property
    def done(self) -> bool:
        """A complete, valid stream (through EOI) has been fed, and nothing after it."""
        return self._state.phase == _DONE and self._state.error is None

    @property
    def complete(self) -> bool:
        """The bytes fed so far are a whole valid stream (for JPEG the same as `done`: nothing follows EOI)."""
        return self.done

    @property
    def mcus(self) -> int:
        """Whole MCUs decoded so far."""
        return self._state.mcus

    def report(self) -> Report:
        """What `validate` says about the bytes fed so far, taken as a whole stream."""
        return _report(_advance(self._state, b"", True))


def _code(key: bytes, symbol: int) -> str | None:
    for code, length, sym in _codes(key):
        if sym == symbol:
            return format(code, f"0{length}b")
    return None


def _flat_mcu(keys: tuple[tuple[bytes, bytes], ...]) -> str | None:
    """The bits of one MCU of flat blocks (DC difference 0, then EOB), if the tables allow it."""
    codes = [_code(key, 0) for pair in keys for key in pair]
    return None if None in codes else "".join(codes)


def _fill(st: _State, mcu: str) -> bytes:
    """Flat MCUs from st's interval start to the end of the scan, with RST markers between."""
    scan = st.header.scan
    eight = int(mcu * 8, 2).to_bytes(len(mcu), "big").replace(b"\xff", b"\xff\x00")
    out, mcus, rst = bytearray(), st.mcus, st.rst
    while mcus < scan.total:
        count = min(scan.interval, scan.total - mcus) if scan.interval else scan.total - mcus
        tail = mcu * (count % 8)
        tail += "1" * (-len(tail) % 8)
        out += eight * (count // 8)
        if tail:
            out += int(tail, 2).to_bytes(len(tail) // 8, "big").replace(b"\xff", b"\xff\x00")
        mcus += count
        if mcus < scan.total:
            out += bytes((0xFF, 0xD0 + rst))
            rst = (rst + 1) & 7
    return bytes(out)


def _scan_header(header: _Header) -> bytes:
    """An SOS (luma tables 0, chroma tables 1) for a header without a usable one of its own,
    preceded by standard Huffman tables and flat quantization tables where the header lacks
    usable ones (tables that break the rules or cannot code a flat block)."""
    components = header.frame.components
    dht, dqt = bytearray(), bytearray()
    for slot in sorted({0, 4} | ({1, 5} if len(components) > 1 else set())):
        key = header.tables[slot]
        if key is not None and (_table_problem(key, dc=slot < 4) or _code(key, 0) is None):
            dht += bytes((slot // 4 << 4 | slot % 4,)) + _STANDARD_TABLES[slot]
    used = sorted({c[3] for c in components})
    missing = [table for table in used if not _quant_tables(header) >> table & 1]
    # One DQT ends an abbreviation: jpeg.restore then adds no tables, so every used one goes in.
    for table in used if missing and header.abbreviated else missing:
        dqt += bytes((table,)) + b"\x01" * 64
    out = b"".join(bytes((0xFF, marker)) + (len(body) + 2).to_bytes(2, "big") + body
                   for marker, body in ((0xC4, dht), (0xDB, dqt)) if body)
    body = bytes((len(components),)) + b"".join(bytes((c[0], 0x11 if i else 0))
                                                for i, c in enumerate(components)) + b"\x00\x3f\x00"
    return out + b"\xff\xda" + (len(body) + 2).to_bytes(2, "big") + body


def repair(data: bytes) -> bytes:
    """Return a valid stream with the same header and size that keeps every whole valid restart
    interval of `data` and fills the missing MCUs with flat blocks (mid-gray after a restart).

    A valid stream comes back unchanged (without trailing bytes). Raises RepairError when `data`
    has no complete frame header (SOF) to take the image size from.
    """
    data = bytes(data)
    st = _advance(_START, data, False)
    header = st.header
    if header.frame is None:
        raise RepairError(f"cannot repair {len(data)} bytes: no complete JPEG frame header (SOF)")
    eoi = b"\xff\xd9"
    if st.phase == _DONE:
        return data[:st.base]
    if st.phase == _TAIL:
        return data[:st.base] + eoi
    scan = header.scan if st.phase == _SCAN else None
    if scan is not None and _flat_mcu(scan.keys) is not None:
        if st.left == 0 and st.nbits == 0:
            # Every MCU up to here is valid and closed; the marker after it is missing or wrong.
            if st.mcus == scan.total:
                return data[:st.base] + eoi
            prefix = data[:st.base] + bytes((0xFF, 0xD0 + st.rst))
        else:
            prefix = data[:st.seg_start]
    else:
        prefix = data[:scan.start if scan else st.base] + _scan_header(header)
    resumed = _advance(_START, prefix, False)
    mcu = _flat_mcu(resumed.header.scan.keys) if resumed.header.scan else None
    if resumed.phase != _SCAN or resumed.error is not None or resumed.nbits or mcu is None:
        raise RepairError(f"cannot repair: the kept header does not validate "
                          f"({resumed.error or 'no scan'})")
    return prefix + _fill(resumed, mcu) + eoi


# ---------------------------------------------------------------------------------------------
# Command line.


def _describe(path: str, report: Report) -> str:
    if report.ok:
        return f"{path}: ok ({report.mcus}/{report.total_mcus} MCUs, {report.offset} bytes)"
    return (f"{path}: INVALID at byte {report.offset} after {report.mcus}/{report.total_mcus} "
            f"MCUs: {report.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanocodec.huffman",
        description="Check JPEG files the way a strict decoder would; exit 1 if any is invalid.")
    parser.add_argument("files", nargs="+", help="JPEG files (complete or abbreviated)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    args = parser.parse_args(argv)
    invalid = 0
    for path in args.files:
        try:
            report = validate(Path(path).read_bytes())
        except OSError as exc:
            report = Report(False, 0, 0, 0, f"cannot read the file: {exc.strerror or exc}")
        invalid += not report.ok
        print(json.dumps({"path": path, **report._asdict()}) if args.json else
              _describe(path, report))
    if len(args.files) > 1:
        print(f"{len(args.files) - invalid} valid, {invalid} invalid", file=sys.stderr)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
