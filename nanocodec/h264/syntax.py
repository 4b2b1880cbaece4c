"""H.264 syntax of whole Annex-B streams: NAL units, parameter sets, slice headers, x264's SEI.

Owns the byte-level reading nanocodec.avc needs to cut, check and describe its streams: splitting
a stream into NAL units, removing emulation prevention, reading SPS/PPS fields, slice headers up
to slice_qp_delta, which slices start pictures, and x264's user-data SEI (find, strip, read its
settings). Reads whole streams at once and raises VideoError on what it cannot read; the strict,
incremental check of every syntax element down to the residual is nanocodec.h264's validator.
Does not encode or decode pictures (nanocodec.avc does, through PyAV).
"""
from __future__ import annotations

from typing import NamedTuple


X264_SEI_UUID = bytes.fromhex("dc45e9bde6d948b7962cd820d923eeef")
SLICE_TYPES = ("P", "B", "I", "SP", "SI")  # by slice_type % 5
VCL_TYPES = frozenset({1, 5})
# NAL types that, between two pictures, belong to the next picture's access unit (H.264 7.4.1.2.3).
ACCESS_UNIT_PREFIX_TYPES = frozenset({6, 7, 8, 9, 14, 15, 16, 17, 18})


class VideoError(ValueError):
    """A source or stream that cannot be read as video; the message names the input and the cause."""


class Nal(NamedTuple):
    offset: int      # first byte of the start code
    type: int        # nal_unit_type
    size: int        # start code + NAL bytes, up to the next start code
    start_code: int  # 3 or 4
    ref_idc: int


class Sps(NamedTuple):
    id: int
    profile_idc: int
    level_idc: int
    chroma_format_idc: int
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int
    delta_pic_order_always_zero: bool
    max_num_ref_frames: int
    width_mbs: int
    height_mbs: int
    frame_mbs_only: bool


class Pps(NamedTuple):
    id: int
    sps_id: int
    cabac: bool
    bottom_field_pic_order_present: bool
    num_ref_idx_l0_default: int
    num_ref_idx_l1_default: int
    weighted_pred: bool
    weighted_bipred_idc: int
    pic_init_qp: int
    redundant_pic_cnt_present: bool


class Slice(NamedTuple):
    offset: int      # the slice NAL's start code
    nal_type: int    # 5 for IDR slices, 1 otherwise
    first_mb: int
    type: str        # "P", "B", "I", "SP" or "SI"
    pps_id: int
    frame_num: int
    qp: int          # pic_init_qp + slice_qp_delta

# ----------------------------------------------------------------------------- bitstream syntax

class _Bits:
    """MSB-first reader over an RBSP with exp-Golomb codes; raises EOFError when it runs out."""

    def __init__(self, rbsp: bytes):
        self.value = int.from_bytes(rbsp, "big")
        self.left = 8 * len(rbsp)

    def u(self, n: int) -> int:
        if n > self.left:
            raise EOFError("slice or parameter set ends early")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def flag(self) -> bool:
        return bool(self.u(1))

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise EOFError("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(data: bytes, nal: Nal, limit: int | None = None) -> bytes:
    """The NAL's bytes after its one-byte header, emulation-prevention bytes removed."""
    start = nal.offset + nal.start_code + 1
    end = nal.offset + nal.size if limit is None else min(nal.offset + nal.size, start + limit)
    return data[start:end].replace(b"\x00\x00\x03", b"\x00\x00")


def nal_units(data: bytes) -> list[Nal]:
    """Every NAL unit of an Annex-B stream, in order; bytes before the first start code are skipped."""
    data = bytes(data)
    starts = []
    at = data.find(b"\x00\x00\x01")
    while at >= 0:
        starts.append(at)
        at = data.find(b"\x00\x00\x01", at + 3)
    # A zero before 00 00 01 makes a 4-byte start code, unless it is the previous NAL's header byte.
    begins = [at - 1 if at and data[at - 1] == 0 and (i == 0 or at - 1 > starts[i - 1] + 3) else at
              for i, at in enumerate(starts)]
    nals = []
    for i, (at, begin) in enumerate(zip(starts, begins)):
        end = begins[i + 1] if i + 1 < len(starts) else len(data)
        if end > at + 3:
            header = data[at + 3]
            nals.append(Nal(begin, header & 0x1F, end - begin, at + 3 - begin, (header >> 5) & 3))
    return nals


def _parse_sps(rbsp: bytes) -> Sps:
    b = _Bits(rbsp)
    profile_idc, _constraints, level_idc, sps_id = b.u(8), b.u(8), b.u(8), b.ue()
    chroma_format_idc = 1
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format_idc = b.ue()
        if chroma_format_idc == 3:
            b.u(1)  # separate_colour_plane_flag
        b.ue(), b.ue(), b.u(1)  # bit depths, qpprime_y_zero_transform_bypass_flag
        if b.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if b.flag():
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    log2_max_frame_num = b.ue() + 4
    poc_type = b.ue()
    log2_max_poc_lsb, always_zero = 0, False
    if poc_type == 0:
        log2_max_poc_lsb = b.ue() + 4
    elif poc_type == 1:
        always_zero = b.flag()
        b.se(), b.se()  # offset_for_non_ref_pic, offset_for_top_to_bottom_field
        for _ in range(b.ue()):
            b.se()
    max_num_ref_frames = b.ue()
    b.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs, height_map_units = b.ue() + 1, b.ue() + 1
    frame_mbs_only = b.flag()
    return Sps(sps_id, profile_idc, level_idc, chroma_format_idc, log2_max_frame_num, poc_type,
               log2_max_poc_lsb, always_zero, max_num_ref_frames, width_mbs,
               height_map_units * (1 if frame_mbs_only else 2), frame_mbs_only)


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + b.se()) % 256
        last = nxt or last


def _parse_pps(rbsp: bytes) -> Pps:
    b = _Bits(rbsp)
    pps_id, sps_id, cabac, bottom_field = b.ue(), b.ue(), b.flag(), b.flag()
    if b.ue():
        raise ValueError("slice groups (FMO) are not supported")
    l0, l1 = b.ue() + 1, b.ue() + 1
    weighted_pred, weighted_bipred_idc = b.flag(), b.u(2)
    pic_init_qp = 26 + b.se()
    b.se(), b.se()  # pic_init_qs_minus26, chroma_qp_index_offset
    b.u(1), b.u(1)  # deblocking_filter_control_present_flag, constrained_intra_pred_flag
    return Pps(pps_id, sps_id, cabac, bottom_field, l0, l1, weighted_pred, weighted_bipred_idc,
               pic_init_qp, b.flag())


def parameter_sets(data: bytes) -> tuple[dict[int, Sps], dict[int, Pps]]:
    """The stream's SPSs and PPSs by id (a later one with the same id replaces an earlier one)."""
    data = bytes(data)
    spss, ppss = {}, {}
    for nal in nal_units(data):
        try:
            if nal.type == 7:
                sps = _parse_sps(_rbsp(data, nal))
                spss[sps.id] = sps
            elif nal.type == 8:
                pps = _parse_pps(_rbsp(data, nal))
                ppss[pps.id] = pps
        except (EOFError, ValueError) as e:
            raise VideoError(f"parameter set at byte {nal.offset}: {e}") from None
    return spss, ppss


def _parse_slice(b: _Bits, nal: Nal, spss: dict[int, Sps], ppss: dict[int, Pps]) -> Slice:
    first_mb, slice_type, pps_id = b.ue(), b.ue() % 5, b.ue()
    if pps_id not in ppss or ppss[pps_id].sps_id not in spss:
        raise ValueError(f"refers to missing PPS {pps_id} or its SPS")
    pps = ppss[pps_id]
    sps = spss[pps.sps_id]
    kind = SLICE_TYPES[slice_type]
    frame_num = b.u(sps.log2_max_frame_num)
    field = not sps.frame_mbs_only and b.flag()
    if field:
        b.u(1)  # bottom_field_flag
    if nal.type == 5:
        b.ue()  # idr_pic_id
    if sps.poc_type == 0:
        b.u(sps.log2_max_poc_lsb)
        if pps.bottom_field_pic_order_present and not field:
            b.se()
    elif sps.poc_type == 1 and not sps.delta_pic_order_always_zero:
        b.se()
        if pps.bottom_field_pic_order_present and not field:
            b.se()
    if pps.redundant_pic_cnt_present:
        b.ue()
    if kind == "B":
        b.u(1)  # direct_spatial_mv_pred_flag
    l0, l1 = pps.num_ref_idx_l0_default, pps.num_ref_idx_l1_default
    if kind in ("P", "SP", "B") and b.flag():  # num_ref_idx_active_override_flag
        l0 = b.ue() + 1
        l1 = b.ue() + 1 if kind == "B" else l1
    for _ in range({"I": 0, "SI": 0, "B": 2}.get(kind, 1)):
        _skip_ref_pic_list_modification(b)
    if (pps.weighted_pred and kind in ("P", "SP")) or (pps.weighted_bipred_idc == 1 and kind == "B"):
        _skip_pred_weight_table(b, sps.chroma_format_idc, l0, l1 if kind == "B" else 0)
    if nal.ref_idc:
        _skip_dec_ref_pic_marking(b, idr=nal.type == 5)
    if pps.cabac and kind not in ("I", "SI"):
        b.ue()  # cabac_init_idc
    return Slice(nal.offset, nal.type, first_mb, kind, pps_id, frame_num, pps.pic_init_qp + b.se())


def _skip_ref_pic_list_modification(b: _Bits) -> None:
    if b.flag():
        while (idc := b.ue()) != 3:
            if idc > 5:
                raise ValueError(f"bad modification_of_pic_nums_idc {idc}")
            b.ue()


def _skip_pred_weight_table(b: _Bits, chroma_format_idc: int, l0: int, l1: int) -> None:
    b.ue()
    if chroma_format_idc:
        b.ue()
    for _ in range(l0 + l1):
        if b.flag():
            b.se(), b.se()
        if chroma_format_idc and b.flag():
            b.se(), b.se(), b.se(), b.se()


def _skip_dec_ref_pic_marking(b: _Bits, idr: bool) -> None:
    if idr:
        b.u(2)
    elif b.flag():
        while (op := b.ue()) != 0:
            if op > 6:
                raise ValueError(f"bad memory_management_control_operation {op}")
            if op in (1, 3):
                b.ue()
            if op == 2:
                b.ue()
            if op in (3, 6):
                b.ue()
            if op == 4:
                b.ue()


def slice_headers(data: bytes) -> list[Slice]:
    """Every slice header up to slice_qp_delta (enough to prove the slice type and QP x264 used)."""
    data = bytes(data)
    spss, ppss = parameter_sets(data)
    slices = []
    for nal in nal_units(data):
        if nal.type in VCL_TYPES:
            try:
                slices.append(_parse_slice(_Bits(_rbsp(data, nal)), nal, spss, ppss))
            except (EOFError, ValueError) as e:
                raise VideoError(f"slice at byte {nal.offset}: {e}") from None
    return slices


def _picture_starts(data: bytes, nals: list[Nal]) -> list[int]:
    """Indices (into nals) of slices with first_mb_in_slice == 0; unreadable slices start nothing."""
    starts = []
    for i, nal in enumerate(nals):
        if nal.type in VCL_TYPES:
            try:
                if _Bits(_rbsp(data, nal, limit=16)).ue() == 0:
                    starts.append(i)
            except EOFError:
                pass
    return starts


def frame_offsets(data: bytes) -> list[int]:
    """Where each coded picture's first slice (first_mb_in_slice == 0) starts its start code."""
    data = bytes(data)
    nals = nal_units(data)
    return [nals[i].offset for i in _picture_starts(data, nals)]


def _is_x264_sei(data: bytes, nal: Nal) -> bool:
    """A SEI NAL whose first message is user_data_unregistered carrying x264's UUID."""
    if nal.type != 6:
        return False
    payload = _rbsp(data, nal, limit=32)
    at = 0
    while at < len(payload) and payload[at] == 0xFF:
        at += 1
    if at >= len(payload) or payload[at] != 5:
        return False
    at += 1
    while at < len(payload) and payload[at] == 0xFF:
        at += 1
    return payload[at + 1:at + 17] == X264_SEI_UUID


def strip_x264_sei(data: bytes) -> bytes:
    """The stream without x264's version-and-settings SEI; every other NAL unit byte-identical."""
    data = bytes(data)
    kept, at = [], 0
    for nal in nal_units(data):
        if _is_x264_sei(data, nal):
            kept.append(data[at:nal.offset])
            at = nal.offset + nal.size
    kept.append(data[at:])
    return b"".join(kept)


def x264_settings(data: bytes) -> dict[str, str]:
    """The `key=value` options x264 wrote into its SEI (empty when the SEI was stripped)."""
    data = bytes(data)
    for nal in nal_units(data):
        if _is_x264_sei(data, nal):
            text = _rbsp(data, nal).split(b"options: ", 1)[-1].split(b"\x00", 1)[0].decode("ascii")
            return dict(item.split("=", 1) for item in text.split() if "=" in item)
    return {}
