"""The validator's public face: `validate`, `Validator` and the `Report` they return.

Owns the verdict type and the two ways to ask for it: the whole stream at once, or fed piece by
piece with O(1) clones. Both run the one walk of nanocodec.huffman.walk; this module only turns
its state into answers. Does not own repair (nanocodec.huffman.mend) or the command line.
"""
from __future__ import annotations

from typing import NamedTuple

from nanocodec.huffman.walk import _DONE, _START, _State, _advance


class Report(NamedTuple):
    ok: bool
    mcus: int  # whole MCUs decoded before the first error
    total_mcus: int  # MCUs the frame header asks for (0 before a frame header is read)
    offset: int  # byte offset of the first error, or len(data) when ok
    error: str | None  # what was expected and what was found; None when ok


def _report(st: _State) -> Report:
    frame = st.header.frame
    total = frame.total if frame else 0
    if st.error is not None:
        return Report(False, st.mcus, total, st.error_at, st.error)
    return Report(True, st.mcus, total, st.base + len(st.pending), None)


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
        """A whole valid stream has been fed (for JPEG the same as done)."""
        return self.done

    @property
    def mcus(self) -> int:
        """Whole MCUs decoded so far."""
        return self._state.mcus

    def report(self) -> Report:
        """What `validate` says about the bytes fed so far, taken as a whole stream."""
        return _report(_advance(self._state, b"", True))
