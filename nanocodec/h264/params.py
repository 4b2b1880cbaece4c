"""Sequence and picture parameter sets and SEI (H.264 7.3.2.1, 7.3.2.2, 7.3.2.3, Annex E), strictly.

Owns reading every field a Baseline stream's SPS (with its VUI and HRD parameters), PPS and
user-data SEI can carry, with each value range the standard or FFmpeg's decoder enforces, into
the few facts the slice layer needs. Features outside the paper's encoder settings are refused
as "unsupported: ...": High-profile SPS syntax, interlace, POC type 1, CABAC, slice groups
(FMO), weighted prediction, redundant pictures, PPS extensions and SEI other than
user_data_unregistered. Does not keep stream state (nanocodec.h264.validator does).
"""
from __future__ import annotations

from typing import NamedTuple

from nanocodec.h264.bits import Dead, Reader

MAX_PIXELS = 8192 * 4320  # nanocodec.avc decodes with this max_pixels bound
# FFmpeg reads some ue(v) fields with short readers: get_ue_golomb_31 takes at most 4 leading
# zeros (values up to 30), get_ue_golomb at most 12 (values up to 8190); longer codes are refused.
UE_31, UE_SHORT = 30, 8190
_BASELINE_LIKE = (66, 77, 88)  # profiles whose SPS has no chroma_format_idc and scaling lists


class Sps(NamedTuple):
    id: int
    raw: bytes
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int
    max_num_ref_frames: int
    width_mbs: int
    height_mbs: int

    @property
    def total_mbs(self) -> int:
        return self.width_mbs * self.height_mbs


class Pps(NamedTuple):
    id: int
    sps_id: int
    raw: bytes
    num_ref_idx_default: int
    num_ref_idx_l1_default: int  # unused by P slices, yet FFmpeg refuses one above 16 there
    pic_init_qp: int
    deblocking_control: bool


def unsupported(what: str) -> Dead:
    return Dead(f"unsupported: {what}")


def _only(read, feature: str):
    """read(), whose refusals all mean a feature outside the supported set."""
    try:
        return read()
    except Dead:
        raise unsupported(feature) from None


def parse_sps(r: Reader, rbsp: bytes) -> Sps:
    """Read an SPS; `rbsp` is the NAL's payload (what a repeat is compared by, as FFmpeg does)."""
    _only(lambda: r.u_of(8, _BASELINE_LIKE, "profile_idc"),
          "profile_idc other than 66, 77 or 88 (High-profile SPS syntax)")
    r.u(6)  # constraint_set0..5_flag
    r.u_of(2, (0,), "reserved_zero_2bits")
    r.u(8)  # level_idc
    sps_id = r.ue(0, UE_31, "seq_parameter_set_id")
    log2_max_frame_num = r.ue(0, 12, "log2_max_frame_num_minus4") + 4
    poc_type = r.ue(0, 2, "pic_order_cnt_type")
    if poc_type == 1:
        raise unsupported("pic_order_cnt_type 1")
    log2_max_poc_lsb = r.ue(0, 12, "log2_max_pic_order_cnt_lsb_minus4") + 4 if poc_type == 0 else 0
    # Fewer references than frame_num values, so a new frame_num never names one still in use.
    max_refs = r.ue(0, min(16, (1 << log2_max_frame_num) - 1), "max_num_ref_frames")
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width = r.ue(0, min(MAX_PIXELS // 256 - 1, UE_SHORT), "pic_width_in_mbs_minus1") + 1
    height = r.ue(0, min(_max_height_mbs(width) - 1, UE_SHORT), "pic_height_in_map_units_minus1") + 1
    if not r.u(1):  # frame_mbs_only_flag
        raise unsupported("interlaced coding (frame_mbs_only_flag 0)")
    r.u(1)  # direct_8x8_inference_flag
    if r.u(1):  # frame_cropping_flag: FFmpeg refuses crops that leave no picture
        left = r.ue(0, min(8 * width - 1, UE_SHORT), "frame_crop_left_offset")
        r.ue(0, min(8 * width - 1 - left, UE_SHORT), "frame_crop_right_offset")
        top = r.ue(0, min(8 * height - 1, UE_SHORT), "frame_crop_top_offset")
        r.ue(0, min(8 * height - 1 - top, UE_SHORT), "frame_crop_bottom_offset")
    if r.u(1):
        _vui(r, max_refs)
    end = r.trailing("SPS")
    return Sps(sps_id, rbsp[:end], log2_max_frame_num, poc_type, log2_max_poc_lsb, max_refs, width, height)


def _max_height_mbs(width_mbs: int) -> int:
    """The most macroblock rows FFmpeg allocates for this width (max_pixels, av_image_check_size)."""
    by_pixels = MAX_PIXELS // (256 * width_mbs)
    by_check = ((2**31 - 1) // 8 - 1) // (16 * width_mbs + 128) - 128  # (w+128)(h+128) < INT_MAX/8
    return max(1, min(by_pixels, by_check // 16))


def _vui(r: Reader, max_refs: int) -> None:
    if r.u(1):  # aspect_ratio_info_present_flag
        idc = r.u_fits(8, lambda lo, hi: lo <= 16 or hi == 255,
                       "aspect_ratio_idc (17..254 are reserved; FFmpeg refuses them)")
        if idc == 255:
            r.u(16), r.u(16)  # sar_width, sar_height
    if r.u(1):  # overscan_info_present_flag
        r.u(1)
    if r.u(1):  # video_signal_type_present_flag
        r.u(4)  # video_format, video_full_range_flag
        if r.u(1):
            r.u(24)  # colour_primaries, transfer_characteristics, matrix_coefficients
    if r.u(1):  # chroma_loc_info_present_flag
        r.ue(0, 5, "chroma_sample_loc_type_top_field")
        r.ue(0, 5, "chroma_sample_loc_type_bottom_field")
    if r.u(1):  # timing_info_present_flag: FFmpeg logs an error for zero values
        r.u_in(32, 1, (1 << 32) - 1, "num_units_in_tick")
        r.u_in(32, 1, (1 << 32) - 1, "time_scale")
        r.u(1)  # fixed_frame_rate_flag
    nal_hrd = r.u(1)
    if nal_hrd:
        _hrd(r)
    vcl_hrd = r.u(1)
    if vcl_hrd:
        _hrd(r)
    if nal_hrd or vcl_hrd:
        r.u(1)  # low_delay_hrd_flag
    r.u(1)  # pic_struct_present_flag
    if r.u(1):  # bitstream_restriction_flag
        r.u(1)  # motion_vectors_over_pic_boundaries_flag
        r.ue(0, 16, "max_bytes_per_pic_denom")
        r.ue(0, 16, "max_bits_per_mb_denom")
        r.ue(0, 16, "log2_max_mv_length_horizontal")
        r.ue(0, 16, "log2_max_mv_length_vertical")
        reorder = r.ue(0, 16, "max_num_reorder_frames")
        r.ue(max(reorder, max_refs), 16, "max_dec_frame_buffering")


def _hrd(r: Reader) -> None:
    count = r.ue(0, UE_31, "cpb_cnt_minus1") + 1
    r.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        r.ue(what="bit_rate_value_minus1")
        r.ue(what="cpb_size_value_minus1")
        r.u(1)  # cbr_flag
    r.u(20)  # four delay and offset lengths


def parse_pps(r: Reader, rbsp: bytes, spss: dict[int, Sps]) -> Pps:
    pps_id = r.ue(0, 255, "pic_parameter_set_id")
    sps_id = r.ue_of(sorted(spss), "seq_parameter_set_id (of an SPS already sent)")
    if r.u(1):
        raise unsupported("CABAC (entropy_coding_mode_flag 1)")
    if r.u(1):
        raise unsupported("bottom_field_pic_order_in_frame_present_flag 1")
    _only(lambda: r.ue_of((0,), "num_slice_groups_minus1"), "slice groups (FMO)")
    refs = r.ue(0, 31, "num_ref_idx_l0_default_active_minus1") + 1
    refs_l1 = r.ue(0, 31, "num_ref_idx_l1_default_active_minus1") + 1
    if r.u(1):
        raise unsupported("weighted prediction")
    r.u_in(2, 0, 2, "weighted_bipred_idc")
    qp = 26 + r.se(-26, 25, "pic_init_qp_minus26")
    r.se(-26, 25, "pic_init_qs_minus26")
    r.se(-12, 12, "chroma_qp_index_offset")
    deblocking = bool(r.u(1))
    r.u(1)  # constrained_intra_pred_flag: every neighbour lies in another slice anyway
    if r.u(1):
        raise unsupported("redundant pictures (redundant_pic_cnt_present_flag 1)")
    _no_extension(r, "PPS", "PPS extension (transform_8x8_mode_flag: High profile)")
    end = r.trailing("PPS")
    return Pps(pps_id, sps_id, rbsp[:end], refs, refs_l1, qp, deblocking)


def _no_extension(r: Reader, what: str, extension: str) -> None:
    """more_rbsp_data() must be false: the rest is exactly rbsp_trailing_bits."""
    start = r.pos
    try:
        r.trailing(what)
    except Dead:
        raise unsupported(extension) from None
    r.pos = start


def parse_sei(r: Reader) -> None:
    """SEI messages; only user_data_unregistered (x264 writes its settings there) is supported."""
    allowed: tuple[int, ...] = (5,)
    while True:
        if r.size - r.pos < 8:
            r.u_of(8, allowed, "SEI payload type (user_data_unregistered) or rbsp_trailing_bits")
        kind = r.u(8)
        if kind == 0x80 and len(allowed) == 2:
            r.pos -= 8
            r.trailing("SEI")
            return
        if kind != 5:
            raise unsupported(f"SEI payload type {kind if kind != 255 else '255 or more'} "
                              "(only user_data_unregistered)")
        allowed = (5, 0x80)
        size = 0
        while (byte := r.u(8)) == 255:
            size += 255
        size += byte
        if size < 16:
            raise Dead(f"user_data_unregistered SEI of {size} bytes, shorter than its 16-byte UUID")
        r.skip_bytes(size)
