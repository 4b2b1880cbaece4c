"""The command line `python -m nanocodec.huffman FILE... [--json]`: exit 1 if any file is invalid.

Owns the one-line description of a JPEG Report; the verdicts come from nanocodec.huffman.validate,
the loop over files, JSON and exit status from nanocodec.verdicts.
"""
from __future__ import annotations

from nanocodec.huffman.validator import Report, validate
from nanocodec.verdicts import check_files


def _describe(path: str, report: Report) -> str:
    if report.ok:
        return f"{path}: ok ({report.mcus}/{report.total_mcus} MCUs, {report.offset} bytes)"
    return (f"{path}: INVALID at byte {report.offset} after {report.mcus}/{report.total_mcus} "
            f"MCUs: {report.error}")


def main(argv: list[str] | None = None) -> int:
    return check_files(argv, prog="python -m nanocodec.huffman",
                       description="Check JPEG files the way a strict decoder would; exit 1 if any is invalid.",
                       files_help="JPEG files (complete or abbreviated)", validate=validate,
                       unreadable=lambda reason: Report(False, 0, 0, 0, reason), describe=_describe)
