"""H.264 (AVC) Annex-B syntax, and a pure-Python validator for the paper's encoder settings.

`validate(data) -> Report(ok, offset, reason, pictures, mbs)` checks a whole stream the way
FFmpeg's strict decoder does, down to every CAVLC residual block; `Validator` does the same fed
piece by piece (`feed`, `clone`, `viable`, `complete`, `report`), refusing the first byte after
which no continuation can be valid; `last_complete(data)` is the longest prefix that is a valid
stream. Scope: Baseline-style streams as nanocodec.avc encodes them (CAVLC, I and P slices,
frames only, one macroblock per slice, 4:2:0 8-bit); anything else is reported as
"unsupported: ...". Modules: syntax (whole-stream helpers nanocodec.avc uses), bits (the
prefix-exact reader), params (SPS/PPS/SEI), slices (slice headers and stream state), macroblock,
cavlc (residual blocks), validator (byte stream and the public API). CLI: python -m nanocodec.h264.
"""
from nanocodec.h264.validator import Report, Validator, last_complete, validate

__all__ = ["Report", "Validator", "last_complete", "validate"]
