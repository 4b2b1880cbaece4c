"""The walk of the JPEG validator: its state, the marker walk and the scan walk.

Owns `_State` (one immutable tuple: phase, position, pending bytes, the header, and where the
scan stands: MCU, block, coefficient, unconsumed bits, restart interval), `_START`, and the walk
itself: `_markers` for everything outside the scan (it calls the segment parsers of
nanocodec.huffman.segments), `_scan` for the entropy-coded data (through the lookahead tables of
nanocodec.huffman.tables), and `_advance`, which validate, Validator.feed and repair share.
Does not own any public name, nor how a state becomes a Report (nanocodec.huffman.validator).

Speed: `_scan` and `_advance` read and rebuild the state by position: reading the fields by name
adds about 0.5 us to a one-token feed of about 8 us, and `_replace` doubles it. A test in
tests/test_huffman.py checks those sites against `_State._fields`, so adding, removing or moving
a field without updating them fails.
"""
from __future__ import annotations

from typing import NamedTuple

from nanocodec.huffman.segments import (_NAMES, _PARSERS, _SHORT_SEGMENTS, _UNSUPPORTED, _Header,
                                        _Invalid, _Reader, _Scan, _Truncated, _marker_problem)
from nanocodec.huffman.tables import _symbol

_SOI, _HEADER, _SCAN, _TAIL, _DONE = range(5)


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
    _, _, _, header, mcus, block, k, acc, nbits, left, rst, seg_start, stuffed, _, _ = st
    ff = data.find(b"\xff", pos)
    if ff < 0:
        ff = end
    follow = scan.follow
    a = rests[block]
    t = a if k else starts[block]
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
                nk, n, why = _symbol(acc, nbits, k, (scan.ac if k else scan.dc)[block],
                                     scan.rooms[block], scan.finishes[block])
                if why:
                    unstuffed = base + pos - seg_start - len(stuffed) - ((nbits + 7) >> 3)
                    error = f"{_where(scan, mcus, block)}: {why}"
                    error_at = _raw_offset(seg_start, stuffed, unstuffed)
                    break
                if n < 0:  # this symbol needs bits that are not here
                    if pos < end:  # data[pos] is an FF without its 00 (yet)
                        # Inside an MCU an FF can only be a stuffed data byte: what FF 00 would
                        # meet here is the verdict on the FF, whatever follows it.
                        probe, _ = _scan(_State(_SCAN, base + pos, b"", header, mcus, block, k,
                                                acc, nbits, left, rst, seg_start, stuffed, None,
                                                0), b"\xff\x00", 0, False)
                        error, error_at = probe.error, probe.error_at
                        if error is None and pos + 1 < end:
                            error = f"{_where(scan, mcus, block)}: found FF {data[pos + 1]:02X} " \
                                    "before the MCU is complete (only FF 00 may appear inside " \
                                    "an MCU)"
                            error_at = base + pos
                    if error is None and final:
                        error = f"data ends inside {_where(scan, mcus, block)}"
                        error_at = base + end
                    break
                if nk < 64:
                    nbits -= n
                    k = nk
                    t = a
                    continue
            nbits -= n
            k = 0
            t, a, block = follow[block]
            if not block:
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
    return _State(_SCAN, base, b"", header, mcus, block, k, acc, nbits, left, rst, seg_start,
                  stuffed, error, error_at), pos


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
