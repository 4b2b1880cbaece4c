"""CAVLC residual blocks (H.264 7.3.5.3.2, 9.2): the VLC tables and residual_block_cavlc.

Owns the code tables (coeff_token by nC range and for 4:2:0 chroma DC, total_zeros, chroma DC
total_zeros, run_before), written from the standard's tables 9-5, 9-7, 9-8, 9-9 and 9-10, and
the walk of one block: coeff_token, trailing-one signs, levels (prefix/suffix with the escape
rules; level_prefix at most 15, as the Baseline, Main and Extended profiles require), total_zeros
and run_before. Each table comes in the variants the block's limits allow (at most 15
coefficients in AC blocks, no run longer than the zeros left), so a code the decoder would refuse
is dead as soon as its bits show it. Does not compute coefficient values or pixels.
"""
from __future__ import annotations

from nanocodec.h264.bits import Reader, vlc_table


def _rows(text: str) -> list[list[int]]:
    return [[int(x) for x in row.split()] for row in text.strip().split("/")]


# Indexed [nC class][4 * TotalCoeff + TrailingOnes]; a length of 0 marks a pair with no code.
_TOKEN_LEN = _rows("""
1 0 0 0 6 2 0 0 8 6 3 0 9 8 7 5 10 9 8 6 11 10 9 7 13 11 10 8 13 13 11 9 13 13 13 10
14 14 13 11 14 14 14 13 15 15 14 14 15 15 15 14 16 15 15 15 16 16 16 15 16 16 16 16 16 16 16 16 /
2 0 0 0 6 2 0 0 6 5 3 0 7 6 6 4 8 6 6 4 8 7 7 5 9 8 8 6 11 9 9 6 11 11 11 7
12 11 11 9 12 12 12 11 12 12 12 11 13 13 13 12 13 13 13 13 13 14 13 13 14 14 14 13 14 14 14 14 /
4 0 0 0 6 4 0 0 6 5 4 0 6 5 5 4 7 5 5 4 7 5 5 4 7 6 6 4 7 6 6 4 8 7 7 5
8 8 7 6 9 8 8 7 9 9 8 8 9 9 9 8 10 9 9 9 10 10 10 10 10 10 10 10 10 10 10 10 /
6 0 0 0 6 6 0 0 6 6 6 0 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6
6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6 6""")
_TOKEN_BITS = _rows("""
1 0 0 0 5 1 0 0 7 4 1 0 7 6 5 3 7 6 5 3 7 6 5 4 15 6 5 4 11 14 5 4 8 10 13 4
15 14 9 4 11 10 13 12 15 14 9 12 11 10 13 8 15 1 9 12 11 14 13 8 7 10 9 12 4 6 5 8 /
3 0 0 0 11 2 0 0 7 7 3 0 7 10 9 5 7 6 5 4 4 6 5 6 7 6 5 8 15 6 5 4 11 14 13 4
15 10 9 4 11 14 13 12 8 10 9 8 15 14 13 12 11 10 9 12 7 11 6 8 9 8 10 1 7 6 5 4 /
15 0 0 0 15 14 0 0 11 15 13 0 8 12 14 12 15 10 11 11 11 8 9 10 9 14 13 9 8 10 9 8 15 14 13 13
11 14 10 12 15 10 13 12 11 14 9 12 8 10 13 8 13 7 9 12 9 12 11 10 5 8 7 6 1 4 3 2 /
3 0 0 0 0 1 0 0 4 5 6 0 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63""")
_CHROMA_DC_TOKEN_LEN = _rows("2 0 0 0 6 1 0 0 6 6 3 0 6 7 7 6 6 8 8 7")[0]
_CHROMA_DC_TOKEN_BITS = _rows("1 0 0 0 7 1 0 0 4 6 1 0 3 3 2 5 2 3 2 0")[0]
# Indexed [TotalCoeff - 1][total_zeros].
_ZEROS_LEN = _rows("""1 3 3 4 4 5 5 6 6 7 7 8 8 9 9 9 / 3 3 3 3 3 4 4 4 4 5 5 6 6 6 6 / 4 3 3 3 4 4 3 3 4 5 5 6 5 6 /
5 3 4 4 3 3 3 4 3 4 5 5 5 / 4 4 4 3 3 3 3 3 4 5 4 5 / 6 5 3 3 3 3 3 3 4 3 6 / 6 5 3 3 3 2 3 4 3 6 /
6 4 5 3 2 2 3 3 6 / 6 6 4 2 2 3 2 5 / 5 5 3 2 2 2 4 / 4 4 3 3 1 3 / 4 4 2 1 3 / 3 3 1 2 / 2 2 1 / 1 1""")
_ZEROS_BITS = _rows("""1 3 2 3 2 3 2 3 2 3 2 3 2 3 2 1 / 7 6 5 4 3 5 4 3 2 3 2 3 2 1 0 / 5 7 6 5 4 3 4 3 2 3 2 1 1 0 /
3 7 5 4 6 5 4 3 3 2 2 1 0 / 5 4 3 7 6 5 4 3 2 1 1 0 / 1 1 7 6 5 4 3 2 1 1 0 / 1 1 5 4 3 3 2 1 1 0 /
1 1 1 3 3 2 2 1 0 / 1 0 1 3 2 1 1 1 / 1 0 1 3 2 1 1 / 0 1 1 2 1 3 / 0 1 1 1 1 / 0 1 1 1 / 0 1 1 / 0 1""")
_CHROMA_DC_ZEROS_LEN = _rows("1 2 3 3 / 1 2 2 / 1 1")
_CHROMA_DC_ZEROS_BITS = _rows("1 1 1 0 / 1 1 0 / 1 0")
# Indexed [min(zerosLeft, 7) - 1][run_before].
_RUN_LEN = _rows("1 1 / 1 2 2 / 2 2 2 2 / 2 2 2 3 3 / 2 2 3 3 3 3 / 2 3 3 3 3 3 3 / 3 3 3 3 3 3 3 4 5 6 7 8 9 10 11")
_RUN_BITS = _rows("1 0 / 1 1 0 / 3 2 1 0 / 3 2 1 1 0 / 3 2 3 2 1 0 / 3 0 1 3 2 5 4 / 7 6 5 4 3 2 1 1 1 1 1 1 1 1 1")


def _code(lengths: list[int], bits: list[int], keep) -> dict[int, tuple[int, int]]:
    return {sym: (length, code) for sym, (length, code) in enumerate(zip(lengths, bits))
            if length and keep(sym)}


# coeff_token by [nC class][at most 15 coefficients]; the symbol is TotalCoeff << 2 | TrailingOnes.
TOKENS = [[vlc_table(_code(_TOKEN_LEN[c], _TOKEN_BITS[c], lambda s, m=most: s >> 2 <= m),
                     f"coeff_token (nC class {c})") for most in (16, 15)] for c in range(4)]
CHROMA_DC_TOKEN = vlc_table(_code(_CHROMA_DC_TOKEN_LEN, _CHROMA_DC_TOKEN_BITS, lambda s: True),
                            "chroma DC coeff_token")
NC_CLASS = (0, 0, 1, 1, 2, 2, 2, 2) + (3,) * 9
# total_zeros by [TotalCoeff][at most 15 coefficients]: total_zeros + TotalCoeff <= maxNumCoeff.
ZEROS = [None] + [[vlc_table(_code(_ZEROS_LEN[tc - 1], _ZEROS_BITS[tc - 1], lambda z, tc=tc, m=most: z + tc <= m),
                             f"total_zeros (TotalCoeff {tc})") if tc < most else None
                   for most in (16, 15)] for tc in range(1, 16)]
CHROMA_DC_ZEROS = [None] + [vlc_table(_code(_CHROMA_DC_ZEROS_LEN[tc - 1], _CHROMA_DC_ZEROS_BITS[tc - 1],
                                            lambda z: True), f"chroma DC total_zeros (TotalCoeff {tc})")
                            for tc in range(1, 4)]
# run_before by zerosLeft (1..15): a run longer than the zeros left is refused.
RUNS = [None] + [vlc_table(_code(_RUN_LEN[min(zl, 7) - 1], _RUN_BITS[min(zl, 7) - 1], lambda r, zl=zl: r <= zl),
                           f"run_before (zerosLeft {zl})") for zl in range(1, 16)]


def block(r: Reader, nc: int, most: int) -> int:
    """One residual_block_cavlc with maxNumCoeff `most` (16, 15 or 4 for chroma DC, nc = -1);
    returns TotalCoeff."""
    if nc < 0:
        token = r.vlc(CHROMA_DC_TOKEN)
    else:
        token = r.vlc(TOKENS[NC_CLASS[nc]][most == 15])
    total, ones = token >> 2, token & 3
    if not total:
        return 0
    r.u(ones)  # trailing_ones_sign_flag
    suffix = 1 if total > 10 and ones < 3 else 0
    for i in range(ones, total):
        prefix = r.leading_zeros(15, "level_prefix")
        size = 4 if prefix == 14 and not suffix else (12 if prefix == 15 else suffix)
        code = (prefix << suffix) + (r.u(size) if size else 0)
        if prefix == 15 and not suffix:
            code += 15
        if i == ones and ones < 3:
            code += 2
        if not suffix:
            suffix = 1
        if (code + 2) >> 1 > 3 << (suffix - 1) and suffix < 6:
            suffix += 1
    if total < most:
        zeros = r.vlc(CHROMA_DC_ZEROS[total] if nc < 0 else ZEROS[total][most == 15])
    else:
        zeros = 0
    for _ in range(total - 1):
        if zeros <= 0:
            break
        zeros -= r.vlc(RUNS[zeros])
    return total
