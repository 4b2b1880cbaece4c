"""Repair of JPEG streams: keep every whole valid restart interval, fill the rest with flat blocks.

Owns `repair` and `RepairError`. It runs the walk of nanocodec.huffman.walk to find how far the
stream is valid, then writes what is missing: an RST or EOI marker, flat MCUs (DC difference 0,
then EOB) up to the end of the scan, and where no usable scan header exists, one of its own with
standard Huffman tables and flat quantization tables. Does not validate on its own account (the
result is checked by walking it again) and never decodes pixels.
"""
from __future__ import annotations

from nanocodec.huffman.segments import _STANDARD_TABLES, _Header, _quant_tables
from nanocodec.huffman.tables import _codes, _table_problem
from nanocodec.huffman.walk import _DONE, _SCAN, _START, _TAIL, _State, _advance


class RepairError(ValueError):
    """The input has no complete frame header, so there is no image size to repair towards."""


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
