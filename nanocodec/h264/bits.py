"""A prefix-exact bit reader over an RBSP: every read either returns a value in its allowed set,
raises `More` (the bits ran out, and some continuation of them gives an allowed value) or raises
`Dead` (no continuation of the bits read so far gives an allowed value).

This exactness is what lets nanocodec.h264's Validator refuse the first byte after which no
continuation can be valid. Exp-Golomb codes, fixed-width fields and VLC codes each check the
partial code they end on: a ue(v) cut off after k leading zeros is dead once 2^k - 1 exceeds its
range, a VLC prefix that starts no allowed code is dead. Owns nothing of H.264's syntax beyond
these primitives and rbsp_trailing_bits.
"""
from __future__ import annotations

import array
from collections.abc import Collection, Sequence

UE_MAX = (1 << 32) - 2  # the longest exp-Golomb code FFmpeg reads has 31 leading zeros


class More(Exception):
    """The bits ran out; what was read so far still fits some valid continuation."""


class Dead(Exception):
    """No continuation of the bits read so far is valid; the message says what was expected."""


MORE = More()


def vlc_table(codes: dict[int, tuple[int, int]], what: str) -> tuple:
    """A lookup table for a prefix code {symbol: (length, code)}: (max length, entries indexed by
    the next max-length bits (length << 16 | symbol, or -1), the proper prefixes of codes (n bits
    b as 1 << n | b), what the code is called). Arrays and int sets keep the tables out of the
    garbage collector's walks (eight 64K-entry lists would cost it milliseconds)."""
    width = max(length for length, _ in codes.values())
    look = array.array("l", [-1]) * (1 << width)
    prefixes = set()
    for symbol, (length, code) in codes.items():
        start = code << (width - length)
        look[start:start + (1 << (width - length))] = array.array("l", [length << 16 | symbol]) * (1 << (width - length))
        for n in range(1, length):
            prefixes.add(1 << n | code >> (length - n))
    return width, look, frozenset(prefixes), what


class Reader:
    """MSB-first reads from `rbsp` (bytes); `pos` is the bit position."""

    __slots__ = ("value", "size", "pos")

    def __init__(self, rbsp: bytes, pos: int = 0) -> None:
        self.value = int.from_bytes(rbsp, "big")
        self.size = 8 * len(rbsp)
        self.pos = pos

    def _rest(self) -> tuple[int, int]:
        left = self.size - self.pos
        return left, self.value & ((1 << left) - 1)

    def u(self, n: int) -> int:
        end = self.pos + n
        if end > self.size:
            raise MORE
        self.pos = end
        return (self.value >> (self.size - end)) & ((1 << n) - 1)

    def u_in(self, n: int, lo: int, hi: int, what: str) -> int:
        """u(n) whose value must lie in lo..hi."""
        left = self.size - self.pos
        if left < n:
            low = (self.value & ((1 << left) - 1)) << (n - left)
            if low + (1 << (n - left)) - 1 < lo or low > hi:
                raise Dead(f"{what} outside {lo}..{hi}")
            raise MORE
        value = self.u(n)
        if not lo <= value <= hi:
            raise Dead(f"{what} {value} outside {lo}..{hi}")
        return value

    def u_of(self, n: int, allowed: Collection[int], what: str) -> int:
        """u(n) whose value must be one of `allowed` (a small set)."""
        left = self.size - self.pos
        if left < n:
            top = self.value & ((1 << left) - 1)
            if not any(v >> (n - left) == top for v in allowed):
                raise Dead(f"{what} can be none of {sorted(allowed)}")
            raise MORE
        value = self.u(n)
        if value not in allowed:
            raise Dead(f"{what} {value} is not {' or '.join(map(str, sorted(allowed)))}")
        return value

    def u_fits(self, n: int, fits, what: str) -> int:
        """u(n) whose value v must satisfy fits(v, v); fits(lo, hi) says whether some value in
        lo..hi does (it judges the values a cut-off field may still take)."""
        left = self.size - self.pos
        if left < n:
            low = (self.value & ((1 << left) - 1)) << (n - left)
            if not fits(low, low + (1 << (n - left)) - 1):
                raise Dead(f"{what}: no value fits")
            raise MORE
        value = self.u(n)
        if not fits(value, value):
            raise Dead(f"{what} {value} does not fit")
        return value

    def flag_is(self, allowed: bool | None, what: str) -> bool:
        """One bit; when `allowed` is not None it must equal it."""
        if allowed is None:
            return bool(self.u(1))
        return bool(self.u_of(1, (int(allowed),), what))

    def _golomb(self) -> int:
        """The code number k of an exp-Golomb code; when cut off raises _Cut(a, b): the k it may
        still become lie in a..b (b None: unbounded)."""
        left = self.size - self.pos
        if left >= 64:  # the common case: the whole code lies in the next 64 bits
            window = (self.value >> (left - 64)) & 0xFFFFFFFFFFFFFFFF
            zeros = 64 - window.bit_length()
            if zeros <= 31:
                self.pos += 2 * zeros + 1
                return (window >> (63 - 2 * zeros)) - 1
        rest = self.value & ((1 << left) - 1)
        if not rest:
            raise _Cut((1 << left) - 1, None, left)
        zeros = left - rest.bit_length()
        if zeros > 31:
            raise Dead("exp-Golomb code longer than 32 bits")
        if 2 * zeros + 1 > left:
            have = left - zeros - 1
            low = (1 << zeros) - 1 + ((rest & ((1 << have) - 1)) << (zeros - have))
            raise _Cut(low, low + (1 << (zeros - have)) - 1, zeros)
        self.pos += 2 * zeros + 1
        return (1 << zeros) - 1 + ((rest >> (left - 2 * zeros - 1)) & ((1 << zeros) - 1))

    def ue(self, lo: int = 0, hi: int = UE_MAX, what: str = "ue(v)") -> int:
        try:
            k = self._golomb()
        except _Cut as cut:
            if cut.zeros > 31 or (cut.b is not None and cut.b < lo) or cut.a > hi:
                raise Dead(f"{what} outside {lo}..{hi}") from None
            raise MORE from None
        if not lo <= k <= hi:
            raise Dead(f"{what} {k} outside {lo}..{hi}")
        return k

    def ue_of(self, allowed: Sequence[int], what: str) -> int:
        """ue(v) whose value must be one of `allowed`."""
        try:
            k = self._golomb()
        except _Cut as cut:
            if cut.zeros > 31 or not any(cut.a <= v and (cut.b is None or v <= cut.b) for v in allowed):
                raise Dead(f"{what} can be none of {_show(allowed)}") from None
            raise MORE from None
        if k not in allowed:
            raise Dead(f"{what} {k} is not {_show(allowed)}")
        return k

    def se(self, lo: int, hi: int, what: str) -> int:
        try:
            k = self._golomb()
        except _Cut as cut:
            if cut.zeros > 31 or not _se_meets(cut.a, UE_MAX if cut.b is None else cut.b, lo, hi):
                raise Dead(f"{what} outside {lo}..{hi}") from None
            raise MORE from None
        value = (k + 1) >> 1 if k & 1 else -(k >> 1)
        if not lo <= value <= hi:
            raise Dead(f"{what} {value} outside {lo}..{hi}")
        return value

    def vlc(self, table: tuple) -> int:
        width, look, prefixes, what = table
        left = self.size - self.pos
        if left >= width:
            entry = look[(self.value >> (left - width)) & ((1 << width) - 1)]
            if entry < 0:
                raise Dead(f"no {what} code starts here")
        else:
            if not left:
                raise MORE
            top = self.value & ((1 << left) - 1)
            entry = look[top << (width - left)]
            if entry < 0 or entry >> 16 > left:
                if 1 << left | top in prefixes:
                    raise MORE
                raise Dead(f"no {what} code starts here")
        self.pos += entry >> 16
        return entry & 0xFFFF

    def leading_zeros(self, limit: int, what: str) -> int:
        """A unary count (zeros then a one, as level_prefix) of at most `limit`."""
        left, rest = self._rest()
        zeros = left - rest.bit_length()
        if zeros > limit:
            raise Dead(f"{what} above {limit}")
        if not rest:
            raise MORE
        self.pos += zeros + 1
        return zeros

    def skip_bytes(self, n: int) -> None:
        """Skip n whole bytes (the reader is byte-aligned)."""
        self.u(0)
        end = self.pos + 8 * n
        if end > self.size:
            raise MORE
        self.pos = end

    def zero_until_aligned(self, what: str) -> None:
        while self.pos & 7:
            self.u_of(1, (0,), what)

    def trailing(self, what: str) -> int:
        """rbsp_trailing_bits (a one, then zeros to the byte boundary); returns the byte length."""
        self.u_of(1, (1,), f"rbsp_stop_one_bit after the {what}")
        self.zero_until_aligned(f"rbsp_alignment_zero_bit after the {what}")
        return self.pos >> 3


class _Cut(Exception):
    def __init__(self, a: int, b: int | None, zeros: int) -> None:
        self.a, self.b, self.zeros = a, b, zeros


def _se_meets(a: int, b: int, lo: int, hi: int) -> bool:
    """Some code number k in a..b maps (se(v): 1, -1, 2, -2, ...) into lo..hi."""
    odd_a, odd_b = a | 1, b if b & 1 else b - 1
    if odd_a <= odd_b and (odd_a + 1) >> 1 <= hi and (odd_b + 1) >> 1 >= lo:
        return True
    even_a, even_b = a + (a & 1), b - (b & 1)
    return even_a <= even_b and -(even_b >> 1) <= hi and -(even_a >> 1) >= lo


def _show(values: Sequence[int]) -> str:
    values = sorted(values)
    return "any of none" if not values else " or ".join(map(str, values[:6])) + (" ..." if len(values) > 6 else "")
