"""Validate Annex-B H.264 streams of the paper's settings, whole or fed piece by piece.

Owns the byte stream layer (start codes, emulation prevention: `00 00 03` drops its 03, which
must be followed by 00-03; `00 00 00` or `00 00 01` ends a NAL unit; `00 00 02` never occurs),
the dispatch of each NAL unit to its parser (parameter sets and SEI: nanocodec.h264.params;
slices: nanocodec.h264.slices), and the public `validate`, `Validator`, `last_complete` and
`Report`.

The Validator keeps the decoder state between NAL units and the current NAL unit's RBSP, and
re-reads that NAL unit on each feed (a slice resumes after its last whole residual block) in a
prefix mode where running out of bits means "viable so far". Every partial field is judged
exactly, so `feed` returns False at the first byte after which no continuation can be valid;
`complete` says the bytes so far are a valid stream (they end at the end of a whole picture).
"""
from __future__ import annotations

from typing import NamedTuple

from nanocodec.h264.bits import Dead, More, Reader
from nanocodec.h264.params import parse_pps, parse_sei, parse_sps
from nanocodec.h264.slices import Progress, Seq, nal_problem, parse_slice

__all__ = ["Report", "Validator", "last_complete", "validate"]


class Report(NamedTuple):
    ok: bool
    offset: int  # the first byte after which no continuation is valid; len(data) when ok
    reason: str | None  # None when ok
    pictures: int  # whole pictures before the problem
    mbs: int  # whole macroblocks before the problem


_START, _HEADER, _NAL, _TRAIL = range(4)
_NAMES = {1: "slice", 5: "IDR slice", 6: "SEI", 7: "SPS", 8: "PPS"}


class _Failed(Exception):
    """`exact`: `at` is surely the first bad byte (else bytes before it in the chunk may be)."""

    def __init__(self, at: int, reason: str, exact: bool) -> None:
        self.at, self.reason, self.exact = at, reason, exact
        self.mark: tuple[int, Validator] | None = None  # where the failing NAL unit began in the chunk


class Validator:
    """Incremental `validate`: feed bytes in pieces of any size; clone to try alternatives.

    `slices_only`: after the first picture only slice NAL units may follow (constrained sampling's
    rule, nanocodec.codecs.SliceContinuation); it refuses some valid streams, never admits one.
    """

    __slots__ = ("_phase", "_zeros", "_after03", "_offset", "_header", "_rbsp", "_progress",
                 "_seq", "_error", "_pic_end", "_tail_ok", "_slices_only")

    def __init__(self, *, slices_only: bool = False) -> None:
        self._slices_only = slices_only
        self._phase, self._zeros, self._after03, self._offset = _START, 0, False, 0
        self._header, self._rbsp, self._progress = 0, b"", None
        self._seq = Seq({}, {})
        self._error: tuple[int, str] | None = None
        self._pic_end = -1  # where the content of the last NAL that completed a picture ends
        self._tail_ok = False  # the last NAL unit completed a picture

    def clone(self) -> Validator:
        twin = type(self).__new__(type(self))
        for name in Validator.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin

    # ------------------------------------------------------------------------- feeding

    def feed(self, chunk: bytes) -> bool:
        """Append bytes; True while everything so far is a prefix of some valid stream."""
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed takes bytes, not {type(chunk).__name__}")
        if self._error is not None:
            return False
        chunk = bytes(chunk)
        if not chunk:
            return True
        before = self.clone() if len(chunk) > 1 else None
        try:
            self._run(chunk)
        except _Failed as failure:
            if failure.exact or before is None:
                self._error = (failure.at, failure.reason)
            else:  # find the exact byte: fed byte by byte every verdict is exact
                start, probe = failure.mark or (0, before)
                for i in range(start, len(chunk)):
                    if not probe.feed(chunk[i:i + 1]):
                        break
                self._error = probe._error
            return False
        return True

    def _run(self, chunk: bytes) -> None:
        i, n, base, mark = 0, len(chunk), self._offset, None
        try:
            while i < n:
                if self._phase == _NAL:
                    i = self._nal_bytes(chunk, i, base)
                elif self._phase == _HEADER:
                    self._offset = base + i
                    mark = (i, self.clone())
                    problem = nal_problem(self._seq, chunk[i])
                    if not problem and self._slices_only and self._seq.pictures and chunk[i] & 31 not in (1, 5):
                        problem = f"NAL unit type {chunk[i] & 31} after the first picture (slices_only: only slices continue)"
                    if problem:
                        raise _Failed(base + i, problem, True)
                    self._header, self._rbsp, self._progress = chunk[i], b"", None
                    self._phase, self._zeros, self._tail_ok = _NAL, 0, False
                    i += 1
                else:
                    byte = chunk[i]
                    if byte == 0:
                        self._zeros += 1
                    elif byte == 1 and self._zeros >= 2:
                        self._phase = _HEADER
                    else:
                        raise _Failed(base + i, "expected a start code (00 00 01)" if self._phase == _START
                                      else "expected zero bytes or a start code after a NAL unit", True)
                    i += 1
            if self._phase == _NAL and not self._after03:
                self._check_prefix(base + n)
        except _Failed as failure:
            failure.mark = mark
            raise
        finally:
            self._offset = base + i

    def _nal_bytes(self, chunk: bytes, i: int, base: int) -> int:
        """Consume NAL unit bytes from chunk[i]; returns where it stopped."""
        if self._after03:
            if chunk[i] > 3:
                raise _Failed(base + i, f"emulation_prevention_three_byte followed by {chunk[i]:#04x} "
                              "(only 00-03 may follow it)", False)
            self._after03 = False
            self._rbsp += chunk[i:i + 1]
            self._zeros = 1 if chunk[i] == 0 else 0
            return i + 1
        if self._zeros >= 2:
            byte = chunk[i]
            if byte in (0, 1):  # 00 00 00 or 00 00 01 ends the NAL unit
                self._finish(base + i - 2, base + i)
                self._phase, self._zeros = (_TRAIL, 3) if byte == 0 else (_HEADER, 0)
                return i + 1
            if byte == 2:
                raise _Failed(base + i, "00 00 02 inside a NAL unit", False)
            if byte == 3:
                self._zeros, self._after03 = 0, True
                self._check_escape(base + i)
                return i + 1
        end = chunk.find(0, i)
        if end < 0:
            end = len(chunk)
        if end > i:
            self._rbsp += chunk[i:end]
            self._zeros = 0
            return end
        self._rbsp += b"\x00"
        self._zeros += 1
        return i + 1

    # ------------------------------------------------------------------------- NAL units

    def _parse(self, rbsp: bytes) -> tuple[int, Seq] | None:
        """The NAL unit read from `rbsp`: (its RBSP length, the state after it), or None while
        it needs more bytes. Raises Dead."""
        kind = self._header & 31
        if kind in (1, 5):
            result = parse_slice(rbsp, self._seq, self._header, self._progress)
            if isinstance(result, Progress):
                self._progress = result
                return None
            return result
        r, seq = Reader(rbsp), self._seq
        try:
            if kind == 7:
                sps = parse_sps(r, rbsp)
                old = seq.spss.get(sps.id)
                ppss = seq.ppss
                if old is not None and old.raw == sps.raw:
                    sps = old
                elif old is not None:  # FFmpeg drops the PPSs of an SPS that changed
                    ppss = {i: p for i, p in ppss.items() if p.sps_id != sps.id}
                seq = seq._replace(spss={**seq.spss, sps.id: sps}, ppss=ppss)
            elif kind == 8:
                pps = parse_pps(r, rbsp, seq.spss)
                seq = seq._replace(ppss={**seq.ppss, pps.id: pps})
            else:
                parse_sei(r)
        except More:
            return None
        return r.pos >> 3, seq

    def _check_prefix(self, at: int) -> None:
        """The current NAL unit, read so far with its trailing zeros as content, is viable."""
        try:
            result = self._parse(self._rbsp)
        except Dead as e:
            raise _Failed(at - 1, self._where(str(e)), False) from None
        if result is not None and len(self._rbsp) - result[0] > self._zeros:
            raise _Failed(at - 1, self._where(self._after_end()), False)

    def _check_escape(self, at: int) -> None:
        """After 00 00 03 one of 00-03 must follow: some of them must continue the NAL unit."""
        progress = self._progress
        for byte in (b"\x00", b"\x01", b"\x02", b"\x03"):
            rbsp = self._rbsp + byte
            try:
                result = self._parse(rbsp)
            except Dead:
                continue
            finally:
                self._progress = progress
            if result is None or result[0] == len(rbsp):
                return
        raise _Failed(at, self._where("emulation_prevention_three_byte where no 00-03 byte "
                                      "can continue the NAL unit"), False)

    def _finish(self, content_end: int, at: int) -> None:
        """The NAL unit ended: it must be whole; its effects become the state."""
        rbsp = self._rbsp[:len(self._rbsp) - self._zeros]
        if self._progress is not None and self._progress.pos > 8 * len(rbsp):
            self._progress = None
        try:
            result = self._parse(rbsp)
        except Dead as e:
            raise _Failed(at, self._where(str(e)), False) from None
        if result is None:
            raise _Failed(at, self._where("the NAL unit ends early"), False)
        if result[0] != len(rbsp):
            raise _Failed(at, self._where(self._after_end()), False)
        self._seq = result[1]
        self._tail_ok = self._header & 31 in (1, 5) and self._seq.pic is None
        if self._tail_ok:
            self._pic_end = content_end

    def _after_end(self) -> str:
        if self._header & 31 in (1, 5):
            return "unsupported: data after the slice's first macroblock (slices of several macroblocks)"
        return "data after the NAL unit's rbsp_trailing_bits"

    def _where(self, reason: str) -> str:
        name = _NAMES.get(self._header & 31, "NAL unit")
        if self._header & 31 in (1, 5):
            seq = self._seq
            name += f" of picture {seq.pictures}, macroblock {seq.next_mb}"
        if reason.startswith("unsupported: "):
            return f"unsupported: {reason[13:]} ({name})"
        return f"{name}: {reason}"

    # ------------------------------------------------------------------------- verdicts

    def _ending(self) -> tuple[bool, Seq, str | None]:
        """Were the stream to end here: valid?, the state after the last NAL unit, why not."""
        seq = self._seq
        if self._phase == _START:
            return False, seq, "no start code"
        if self._phase == _HEADER:
            return False, seq, "the stream ends after a start code"
        if self._phase == _NAL:
            if self._after03:
                return False, seq, "the stream ends after an emulation_prevention_three_byte"
            probe = self.clone()
            try:
                probe._finish(-1, self._offset)
            except _Failed as failure:
                return False, seq, failure.reason
            seq = probe._seq
            if probe._tail_ok:
                return True, seq, None
        elif self._tail_ok:
            return True, seq, None
        if seq.pic is not None:
            return False, seq, (f"the stream ends inside picture {seq.pictures} "
                                f"({seq.next_mb} of {seq.pic.total_mbs} macroblocks)")
        if not seq.pictures:
            return False, seq, "the stream holds no picture"
        return False, seq, "the stream ends with a NAL unit after its last picture"

    @property
    def viable(self) -> bool:
        return self._error is None

    @property
    def complete(self) -> bool:
        """The bytes so far are a valid stream: they end exactly at the end of a whole picture."""
        return self._error is None and self._ending()[0]

    @property
    def done(self) -> bool:
        """Always False: another picture may follow any valid stream."""
        return False

    @property
    def pictures(self) -> int:
        """Whole pictures fed so far (the current NAL unit counted once it has ended)."""
        return self._seq.pictures

    @property
    def mbs(self) -> int:
        """Whole macroblocks fed so far (the current NAL unit counted once it has ended)."""
        return self._seq.mbs

    def report(self) -> Report:
        """What `validate` says about the bytes fed so far, taken as a whole stream."""
        seq = self._seq
        if self._error is not None:
            return Report(False, self._error[0], self._error[1], seq.pictures, seq.mbs)
        ok, seq, why = self._ending()
        return Report(ok, self._offset, why, seq.pictures, seq.mbs)


def validate(data: bytes) -> Report:
    """Check a whole Annex-B stream the way FFmpeg's strict decoder would (never raises on any bytes;
    a TypeError for what is not bytes-like)."""
    v = Validator()
    v.feed(data)
    return v.report()


def last_complete(data: bytes) -> int:
    """The length of the longest prefix of `data` that is a valid stream (0 if none)."""
    data = bytes(data)
    v = Validator()
    if v.feed(data) and v.complete:
        return len(data)
    stop = v._error[0] if v._error is not None else len(data)
    before = Validator()
    if v._error is not None and before.feed(data[:stop]) and before.complete:
        return stop
    end = v._pic_end
    if end < 0:
        return 0
    while end < stop and data[end] == 0:
        end += 1
    return end
