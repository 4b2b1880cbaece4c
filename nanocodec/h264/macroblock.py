"""The macroblock layer of a slice that holds one macroblock (H.264 7.3.4-7.3.5, CAVLC, 4:2:0).

Owns slice_data for I and P slices when every macroblock is its own slice: mb_skip_run (0, or 1
for a P_Skip macroblock), mb_type, intra 4x4 modes, intra_chroma_pred_mode, sub_mb_type, ref_idx
te(v), mvd, coded_block_pattern me(v), mb_qp_delta and the order of residual blocks with each
one's nC. Because every neighbouring macroblock lies in another slice, none is available
(clause 6.4.x): nC comes from 4x4 blocks inside the macroblock only, and only the intra modes
that need no sample outside it are legal, as FFmpeg's check_intra4x4_pred_mode and
check_intra_pred_mode require (I_16x16 and chroma: DC only; 4x4 blocks on the top row: horizontal,
DC, horizontal-up; on the left column: vertical, DC, diagonal-down-left, vertical-left).

`start` reads everything before the residual and returns the residual plan; `residual` walks
the plan from any step, so a caller can resume after the last whole block it has seen.
"""
from __future__ import annotations

from nanocodec.h264 import cavlc
from nanocodec.h264.bits import Dead, Reader
from nanocodec.h264.params import unsupported

# coded_block_pattern by codeNum (table 9-4, chroma_format_idc 1): intra 4x4 and inter.
INTRA_CBP = (47, 31, 15, 0, 23, 27, 29, 30, 7, 11, 13, 14, 39, 43, 45, 46, 16, 3, 5, 10, 12, 19, 21,
             26, 28, 35, 37, 42, 44, 1, 2, 4, 8, 17, 18, 20, 24, 6, 9, 22, 25, 32, 33, 34, 36, 40, 38, 41)
INTER_CBP = (0, 16, 1, 2, 4, 8, 32, 3, 5, 10, 12, 15, 47, 7, 11, 13, 14, 6, 9, 31, 35, 37, 42, 44,
             33, 34, 36, 40, 39, 43, 45, 46, 17, 18, 20, 24, 19, 21, 26, 28, 23, 27, 29, 30, 22, 25, 38, 41)
# I-slice mb_type values legal without neighbours: I_NxN, the four I_16x16 DC types, I_PCM.
I_TYPES = (0, 3, 7, 11, 15, 19, 23, 25)
P_TYPES = (0, 1, 2, 3, 4) + tuple(5 + t for t in I_TYPES)
_I_WHAT = "mb_type (I_NxN, I_PCM or an I_16x16 DC type: other 16x16 modes need a neighbour)"
# Luma 4x4 block index -> (x, y) in 4x4 units, and back.
BLOCK_XY = tuple(((b & 1) | (b >> 1 & 2), (b >> 1 & 1) | (b >> 2 & 2)) for b in range(16))
BLOCK_AT = {xy: b for b, xy in enumerate(BLOCK_XY)}
_EDGE_MODES = {"top": (1, 2, 8), "left": (0, 2, 3, 7)}
_PARTS = {0: 1, 1: 2, 2: 2}  # P_L0_16x16, P_L0_L0_16x8, P_L0_L0_8x16
_SUB_PARTS = (1, 2, 2, 4)    # P_L0_8x8, 8x4, 4x8, 4x4
MVD = 1 << 15  # mvd_l0 lies in -8192..8191.75 luma samples: quarter units -2^15..2^15-1

# Residual plan entries: (kind, index); kinds: luma DC, luma AC (15), luma 4x4 (16), chroma DC, chroma AC.
LUMA_DC, LUMA_AC, LUMA_4X4, CHROMA_DC, CHROMA_AC = range(5)


def _rems(pred: int, modes: tuple[int, ...]) -> tuple[int, ...]:
    """rem_intra4x4_pred_mode values that give one of `modes` (never pred itself)."""
    return tuple(m if m < pred else m - 1 for m in modes if m != pred)


_EDGE_REMS = {side: _rems(2, modes) for side, modes in _EDGE_MODES.items()}


def start(r: Reader, kind: str, refs: int) -> list[tuple[int, int]] | None:
    """Read the macroblock up to its residual; `kind` "I" or "P", `refs` the active references.
    Returns the residual plan, or None for a P_Skip macroblock (nothing more to read)."""
    if kind == "P":
        try:
            if r.ue_of((0, 1), "mb_skip_run"):
                return None
        except Dead:
            raise unsupported("slices of several macroblocks (mb_skip_run above 1)") from None
        mb_type = r.ue_of(P_TYPES, "P-slice " + _I_WHAT)
        if mb_type < 5:
            return _inter(r, mb_type, refs)
        mb_type -= 5
    else:
        mb_type = r.ue_of(I_TYPES, _I_WHAT)
    if mb_type == 25:
        r.zero_until_aligned("pcm_alignment_zero_bit")
        r.skip_bytes(384)
        return []
    if mb_type == 0:
        _intra4x4_modes(r)
    r.ue_of((0,), "intra_chroma_pred_mode (DC: the others need a neighbour)")
    if mb_type == 0:
        cbp = INTRA_CBP[r.ue(0, 47, "coded_block_pattern")]
    else:
        cbp = (15 if mb_type >= 13 else 0) | ((mb_type - 1) // 4 % 3) << 4
    return _plan(r, cbp, intra16=mb_type != 0)


def _intra4x4_modes(r: Reader) -> None:
    modes: dict[tuple[int, int], int] = {}
    for x, y in BLOCK_XY:
        if x == 0 and y == 0:
            r.u_of(1, (1,), "prev_intra4x4_pred_mode_flag of block 0 (only DC needs no neighbour)")
            modes[0, 0] = 2
            continue
        pred = 2 if x == 0 or y == 0 else min(modes[x - 1, y], modes[x, y - 1])
        if r.u(1):  # prev_intra4x4_pred_mode_flag: the predicted mode is always legal here
            modes[x, y] = pred
            continue
        if y == 0 or x == 0:
            side = "top" if y == 0 else "left"
            rem = r.u_of(3, _EDGE_REMS[side], f"rem_intra4x4_pred_mode on the {side} edge "
                         f"(modes {_EDGE_MODES[side]} need no neighbour)")
        else:
            rem = r.u(3)
        modes[x, y] = rem if rem < pred else rem + 1


def _ref_idx(r: Reader, refs: int) -> None:
    if refs == 2:
        r.u(1)  # te(v) with range 1: one inverted bit
    elif refs > 2:
        r.ue(0, refs - 1, "ref_idx_l0")


def _mvd(r: Reader, count: int) -> None:
    for _ in range(2 * count):
        r.se(-MVD, MVD - 1, "mvd_l0")


def _inter(r: Reader, mb_type: int, refs: int) -> list[tuple[int, int]]:
    if mb_type < 3:
        for _ in range(_PARTS[mb_type]):
            _ref_idx(r, refs)
        _mvd(r, _PARTS[mb_type])
    else:
        subs = [r.ue(0, 3, "sub_mb_type") for _ in range(4)]
        if mb_type == 3:  # P_8x8; P_8x8ref0 has every ref_idx 0
            for _ in range(4):
                _ref_idx(r, refs)
        for sub in subs:
            _mvd(r, _SUB_PARTS[sub])
    return _plan(r, INTER_CBP[r.ue(0, 47, "coded_block_pattern")], intra16=False)


def _plan(r: Reader, cbp: int, intra16: bool) -> list[tuple[int, int]]:
    luma, chroma = cbp & 15, cbp >> 4
    if luma or chroma or intra16:
        r.se(-26, 25, "mb_qp_delta")
    plan = []
    if intra16:
        plan.append((LUMA_DC, 0))
        if luma:
            plan += [(LUMA_AC, b) for b in range(16)]
    else:
        plan += [(LUMA_4X4, b) for b in range(16) if luma >> (b >> 2) & 1]
    if chroma:
        plan += [(CHROMA_DC, 0), (CHROMA_DC, 1)]
    if chroma == 2:
        plan += [(CHROMA_AC, b) for b in range(8)]
    return plan


def _nc(counts: tuple[int, ...], left: int | None, top: int | None) -> int:
    if left is not None and top is not None:
        return (counts[left] + counts[top] + 1) >> 1
    if left is not None:
        return counts[left]
    return counts[top] if top is not None else 0


def residual(r: Reader, plan: list[tuple[int, int]], step: int, counts: tuple[int, ...],
             saved: list) -> None:
    """Walk plan[step:]; `counts` holds TotalCoeff of the 16 luma then 8 chroma 4x4 blocks so far.
    After each whole block, saved[0] becomes (bit position, next step, counts)."""
    for step in range(step, len(plan)):
        kind, index = plan[step]
        if kind == CHROMA_DC:
            cavlc.block(r, -1, 4)
        elif kind == LUMA_DC:
            cavlc.block(r, 0, 16)
        else:
            if kind == CHROMA_AC:
                x, y, base = index & 1, index >> 1 & 1, 16 + (index & 4)
                left = base + (index & 2) if x else None
                top = base + (index & 1) if y else None
            else:
                x, y = BLOCK_XY[index]
                left = BLOCK_AT[x - 1, y] if x else None
                top = BLOCK_AT[x, y - 1] if y else None
            slot = 16 + index if kind == CHROMA_AC else index
            total = cavlc.block(r, _nc(counts, left, top), 15 if kind != LUMA_4X4 else 16)
            if total:
                counts = counts[:slot] + (total,) + counts[slot + 1:]
        saved[0] = (r.pos, step + 1, counts)
