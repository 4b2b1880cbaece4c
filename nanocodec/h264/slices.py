"""Slice headers and the stream state that judges them (H.264 7.3.3, 7.4.3, 8.2.1, 8.2.4, 8.2.5).

Owns `Seq`, the decoder state carried from NAL unit to NAL unit (parameter sets, the coded video
sequence's SPS, the picture being assembled, the short-term reference frames, frame_num and POC
history), `nal_problem` (whether a NAL unit of a given header byte may come next at all), and
`parse_slice`, which reads one slice NAL unit (header, its one macroblock, trailing bits) and
returns the state after it. Rules, each as strict as FFmpeg or the standard, whichever is
stricter: pictures are whole slices in order, macroblock 0 to the last, before anything else; the
first picture and every SPS change is IDR; every slice of a picture agrees on its PPS, frame_num,
idr_pic_id, POC and reference-ness; frame_num counts up by one per reference picture (no gaps);
POC increases within a coded video sequence; num_ref_idx_active never exceeds the references
decoded; ref_pic_list_modification names existing references; QP stays in 0..51.
"""
from __future__ import annotations

from typing import NamedTuple

from nanocodec.h264 import macroblock
from nanocodec.h264.bits import Dead, More, Reader
from nanocodec.h264.params import Pps, Sps, unsupported


class Picture(NamedTuple):
    """The facts every slice of the picture being assembled must repeat."""
    idr: bool
    ref: bool
    pps_id: int
    frame_num: int
    idr_pic_id: int
    poc_lsb: int
    types: tuple[int, ...]  # slice_type values its next slice may take
    refs: tuple[int, ...]  # frame_num of the references it may use, oldest first
    total_mbs: int


class Seq(NamedTuple):
    spss: dict  # id -> Sps; replaced, never mutated
    ppss: dict  # id -> Pps
    active: Sps | None = None  # the SPS of the coded video sequence (since the last IDR)
    pic: Picture | None = None  # the picture being assembled, None between pictures
    next_mb: int = 0
    refs: tuple[int, ...] = ()  # short-term reference frames after the last picture, oldest first
    prev_ref_frame_num: int = 0
    prev_nonref: bool = False
    prev_idr_id: int | None = None  # idr_pic_id when the previous picture was IDR
    poc: tuple[int, int, int] = (0, 0, 0)  # POC type 0: prevPicOrderCntMsb, prevPicOrderCntLsb, last POC
    pictures: int = 0
    mbs: int = 0


def nal_problem(seq: Seq, header: int) -> str | None:
    """Why a NAL unit with this header byte cannot come next, or None."""
    ref_idc, kind = header >> 5 & 3, header & 31
    if header & 0x80:
        return "forbidden_zero_bit is 1"
    if kind not in (1, 5, 6, 7, 8):
        return f"unsupported: NAL unit type {kind}"
    if seq.pic is not None:
        if kind not in (1, 5):
            return (f"NAL unit type {kind} inside a picture (it has {seq.next_mb} of its "
                    f"{seq.pic.total_mbs} macroblocks)")
        if (kind == 5) != seq.pic.idr or bool(ref_idc) != seq.pic.ref:
            return "a slice whose IDR-ness or nal_ref_idc differs from its picture's other slices"
        return None
    if kind in (7, 8) and not ref_idc:
        return "a parameter set with nal_ref_idc 0"
    if kind == 6 and ref_idc:
        return "an SEI with nal_ref_idc other than 0"
    if kind == 8 and not seq.spss:
        return "a PPS before any SPS"
    if kind == 5 and not ref_idc:
        return "an IDR slice with nal_ref_idc 0"
    if kind in (1, 5) and not _pps_choices(seq, kind == 5):
        if kind == 1 and seq.active is None:
            return "a non-IDR picture before the first IDR picture"
        return "a slice with no PPS it may use (missing, or its SPS changed without an IDR)"
    if kind == 1 and not ref_idc and seq.prev_nonref and seq.active.poc_type == 2:
        return "two non-reference pictures in a row with pic_order_cnt_type 2"
    return None


def _pps_choices(seq: Seq, idr: bool) -> list[int]:
    if idr:
        return sorted(i for i, pps in seq.ppss.items() if pps.sps_id in seq.spss)
    if seq.active is None:
        return []
    return sorted(i for i, pps in seq.ppss.items() if seq.spss.get(pps.sps_id) == seq.active)


class Header(NamedTuple):
    kind: str   # "I" or "P"
    refs: int   # num_ref_idx_l0_active
    after: Seq  # the state once this slice's macroblock is whole


def parse_header(r: Reader, seq: Seq, header: int) -> Header:
    idr, ref = header & 31 == 5, bool(header >> 5 & 3)
    pic = seq.pic
    r.ue_of((seq.next_mb,) if pic else (0,), "first_mb_in_slice (the next macroblock in order)")
    slice_type = r.ue_of(_slice_types(seq, idr), "slice_type (I or P, as its picture allows)")
    kind = "P" if slice_type % 5 == 0 else "I"
    pps_id = r.ue_of((pic.pps_id,) if pic else _pps_choices(seq, idr), "pic_parameter_set_id")
    pps: Pps = seq.ppss[pps_id]
    sps: Sps = seq.spss[pps.sps_id]
    max_frame_num = 1 << sps.log2_max_frame_num
    if pic:
        frame_num = pic.frame_num
    else:
        frame_num = 0 if idr else (seq.prev_ref_frame_num + 1) % max_frame_num
    r.u_of(sps.log2_max_frame_num, (frame_num,), "frame_num (one more than the last reference's)")
    idr_pic_id = 0
    if idr:
        if pic:
            idr_pic_id = r.ue_of((pic.idr_pic_id,), "idr_pic_id (its picture's)")
        else:
            top = 65534 if seq.prev_idr_id == 65535 else 65535
            idr_pic_id = r.ue(0, top, "idr_pic_id")
            if idr_pic_id == seq.prev_idr_id:
                raise Dead(f"idr_pic_id {idr_pic_id} repeats the previous IDR picture's")
    poc, lsb = seq.poc, 0
    if sps.poc_type == 0:
        lsb, poc = _poc_lsb(r, seq, sps, idr, ref)
    refs = pic.refs if pic else (() if idr else seq.refs)
    active = 0
    if kind == "P":
        active = _ref_counts(r, pps, sps, refs, frame_num)
    if ref:
        if idr:
            if r.u(1):
                raise unsupported("no_output_of_prior_pics_flag 1")
            if r.u(1):
                raise unsupported("long-term reference pictures")
        elif r.u(1):
            raise unsupported("memory_management_control_operation (adaptive reference marking)")
    r.se(-pps.pic_init_qp, 51 - pps.pic_init_qp, "slice_qp_delta (QP in 0..51)")
    if pps.deblocking_control and r.ue(0, 2, "disable_deblocking_filter_idc") != 1:
        r.se(-6, 6, "slice_alpha_c0_offset_div2")
        r.se(-6, 6, "slice_beta_offset_div2")
    return Header(kind, active, _after(seq, sps, pps_id, slice_type, idr, ref, frame_num, idr_pic_id,
                                       lsb, poc, refs))


def _slice_types(seq: Seq, idr: bool) -> tuple[int, ...]:
    """slice_type values the first slice of a picture may take: I or P (P only with references
    to use), 0 and 2 or, saying every slice of the picture has the same type, 5 and 7."""
    if seq.pic:
        return seq.pic.types
    return (2, 7) if idr or not seq.refs else (0, 2, 5, 7)


def _later_types(types: tuple[int, ...], slice_type: int) -> tuple[int, ...]:
    """What may follow a slice of `slice_type` in a picture whose slices could be `types`: a type
    of 5..9 fixes every slice's type (to it or it minus 5), and is allowed only while every slice
    so far has that type."""
    if slice_type >= 5:
        return (slice_type - 5, slice_type)
    return tuple(t for t in types if t < 5 or t == slice_type + 5)


def _poc_lsb(r: Reader, seq: Seq, sps: Sps, idr: bool, ref: bool) -> tuple[int, tuple[int, int, int]]:
    """pic_order_cnt_lsb: its picture's in later slices; after an IDR, a POC above the last one."""
    bits, pic = sps.log2_max_poc_lsb, seq.pic
    if pic:
        return r.u_of(bits, (pic.poc_lsb,), "pic_order_cnt_lsb (its picture's)"), seq.poc
    if idr:
        lsb = r.u(bits)
        return lsb, (0, lsb, lsb)
    prev_msb, prev_lsb, last = seq.poc
    size = 1 << bits

    def order(lsb: int) -> int:  # 8.2.1.1
        if lsb < prev_lsb and prev_lsb - lsb >= size // 2:
            return prev_msb + size + lsb
        if lsb > prev_lsb and lsb - prev_lsb > size // 2:
            return prev_msb - size + lsb
        return prev_msb + lsb

    def fits(lo: int, hi: int) -> bool:  # POC rises with lsb inside each of three pieces
        tops = (prev_lsb - size // 2, prev_lsb + size // 2, size - 1)
        return any(order(min(hi, top)) > last for top in tops if min(hi, top) >= lo)

    lsb = r.u_fits(bits, fits, "pic_order_cnt_lsb (POC must increase)")
    poc = order(lsb)
    return lsb, ((poc - lsb, lsb, poc) if ref else (seq.poc[0], seq.poc[1], poc))


def _ref_counts(r: Reader, pps: Pps, sps: Sps, refs: tuple[int, ...], frame_num: int) -> int:
    """num_ref_idx_active_override and ref_pic_list_modification; returns the active count."""
    active = pps.num_ref_idx_default
    # FFmpeg checks both lists' defaults against 16, even in P slices; an override sets list 1 to one.
    must = active > len(refs) or pps.num_ref_idx_l1_default > 16
    if r.flag_is(True if must else None, "num_ref_idx_active_override_flag (more references "
                 "by default than decoded, or over 16)"):
        active = r.ue(0, min(31, len(refs) - 1), "num_ref_idx_l0_active_minus1 (below the "
                      "references decoded)") + 1
    if r.u(1):  # ref_pic_list_modification_flag_l0
        size, pred = 1 << sps.log2_max_frame_num, frame_num
        for count in range(active + 1):
            idc = r.ue_of((0, 1, 3) if count < active else (3,), "modification_of_pic_nums_idc")
            if idc == 3:
                break
            sign = -1 if idc == 0 else 1
            diffs = {(sign * (f - pred) % size or size) - 1: f for f in refs}
            pred = diffs[r.ue_of(sorted(diffs), "abs_diff_pic_num_minus1 (to a reference)")]
    return active


def _after(seq: Seq, sps: Sps, pps_id: int, slice_type: int, idr: bool, ref: bool, frame_num: int,
           idr_pic_id: int, lsb: int, poc: tuple[int, int, int], refs: tuple[int, ...]) -> Seq:
    pic = seq.pic
    if pic is None:
        types = _later_types(_slice_types(seq, idr), slice_type)
        pic = Picture(idr, ref, pps_id, frame_num, idr_pic_id, lsb, types, refs, sps.total_mbs)
        marked = seq.refs
        if idr:
            marked = (0,) if sps.max_num_ref_frames else ()
        elif ref and sps.max_num_ref_frames:
            marked = (seq.refs + (frame_num,))[-sps.max_num_ref_frames:]
        seq = seq._replace(active=sps if idr else seq.active, refs=marked, poc=poc,
                           prev_ref_frame_num=frame_num if ref else seq.prev_ref_frame_num,
                           prev_nonref=not ref, prev_idr_id=idr_pic_id if idr else None)
    elif _later_types(pic.types, slice_type) != pic.types:
        pic = pic._replace(types=_later_types(pic.types, slice_type))
    done = seq.next_mb + 1 == pic.total_mbs
    # Built directly: NamedTuple._replace costs more than the rest of a slice header.
    return tuple.__new__(Seq, seq[:3] + (None if done else pic, 0 if done else seq.next_mb + 1) +
                         seq[5:10] + (seq.pictures + done, seq.mbs + 1))


class Progress(NamedTuple):
    """How far a slice NAL unit has been read: resume from `pos` at residual `step`."""
    pos: int
    head: Header | None
    plan: list | None
    step: int
    counts: tuple[int, ...]


_NO_COUNTS = (0,) * 24


def parse_slice(rbsp: bytes, seq: Seq, header: int, progress: Progress | None) -> tuple[int, Seq] | Progress:
    """Read a slice NAL unit's RBSP from `progress` (None: from its start). Returns (its length
    in bytes through rbsp_slice_trailing_bits, the state after it) when it is whole, or the
    progress to resume from once more bytes arrive. Raises Dead when no continuation is valid."""
    if progress is not None and progress.head is None:
        progress = None
    r = Reader(rbsp, progress.pos if progress else 0)
    saved = [progress]
    try:
        if progress is None:
            head = parse_header(r, seq, header)
            saved[0] = progress = Progress(r.pos, head, None, 0, _NO_COUNTS)
        head = progress.head
        if progress.plan is None:
            plan = macroblock.start(r, head.kind, head.refs)
            saved[0] = progress = Progress(r.pos, head, plan or [], 0, _NO_COUNTS)
        if progress.step < len(progress.plan):
            box = [(progress.pos, progress.step, progress.counts)]
            try:
                macroblock.residual(r, progress.plan, progress.step, progress.counts, box)
            finally:
                pos, step, counts = box[0]
                saved[0] = progress = Progress(pos, head, progress.plan, step, counts)
        try:
            return r.trailing("slice"), head.after
        except Dead:  # FFmpeg would read another macroblock here
            raise unsupported("slices of several macroblocks (more data after the first)") from None
    except More:
        return saved[0] or _NOTHING


_NOTHING = Progress(0, None, None, 0, _NO_COUNTS)
