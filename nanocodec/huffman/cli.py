"""The command line `python -m nanocodec.huffman FILE... [--json]`: exit 1 if any file is invalid.

Owns the one-line and JSON descriptions of a Report and the exit status; the verdicts come from
nanocodec.huffman.validate. An unreadable file is reported as invalid, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nanocodec.huffman.validator import Report, validate


def _describe(path: str, report: Report) -> str:
    if report.ok:
        return f"{path}: ok ({report.mcus}/{report.total_mcus} MCUs, {report.offset} bytes)"
    return (f"{path}: INVALID at byte {report.offset} after {report.mcus}/{report.total_mcus} "
            f"MCUs: {report.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanocodec.huffman",
        description="Check JPEG files the way a strict decoder would; exit 1 if any is invalid.")
    parser.add_argument("files", nargs="+", help="JPEG files (complete or abbreviated)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    args = parser.parse_args(argv)
    invalid = 0
    for path in args.files:
        try:
            report = validate(Path(path).read_bytes())
        except OSError as exc:
            report = Report(False, 0, 0, 0, f"cannot read the file: {exc.strerror or exc}")
        invalid += not report.ok
        print(json.dumps({"path": path, **report._asdict()}) if args.json else
              _describe(path, report))
    if len(args.files) > 1:
        print(f"{len(args.files) - invalid} valid, {invalid} invalid", file=sys.stderr)
    return 1 if invalid else 0
