"""python -m nanocodec.h264 FILE... [--json]: check H.264 Annex-B streams; exit 1 if any is invalid.

Owns the one-line description of an H.264 Report; the loop over files, JSON and exit status come
from nanocodec.verdicts.
"""
from __future__ import annotations

import sys

from nanocodec.h264.validator import Report, validate
from nanocodec.verdicts import check_files


def _describe(path: str, report: Report) -> str:
    if report.ok:
        return f"{path}: ok ({_count(report.pictures, 'picture')}, {_count(report.mbs, 'macroblock')}, {report.offset} bytes)"
    return (f"{path}: INVALID at byte {report.offset} after {_count(report.pictures, 'picture')} "
            f"({_count(report.mbs, 'macroblock')}): {report.reason}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    return check_files(argv, prog="python -m nanocodec.h264",
                       description="Check H.264 Annex-B streams (the paper's settings) the way FFmpeg's strict "
                                   "decoder would; exit 1 if any is invalid.",
                       files_help=".h264 Annex-B streams", validate=validate,
                       unreadable=lambda reason: Report(False, 0, reason, 0, 0), describe=_describe)


if __name__ == "__main__":
    sys.exit(main())
