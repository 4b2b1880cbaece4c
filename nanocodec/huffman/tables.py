"""Huffman tables of the JPEG validator: canonical codes, fast lookahead tables, the exact decoder.

Owns everything derived from one DHT table (keyed by its DHT bytes: 16 code counts, then the
symbols): the rules a table must meet to be used by a scan (`_table_problem`), the canonical
codes, the 16-bit lookahead tables the scan walk indexes (`_lookahead`), which AC codes may still
end a block from each coefficient (`_finishes`, `_room`), and `_symbol`, the exact one-symbol
decoder that is the only place a scan error is diagnosed. Also the Annex K tables' DHT bytes.
Does not own segments, the walk state or any public name (see nanocodec.huffman): every table
here is a pure function of its key, cached, and shared by all validators.
"""
from __future__ import annotations

import functools

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
