"""python -m nanocodec.h264 FILE... [--json]: check H.264 Annex-B streams; exit 1 if any is invalid."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nanocodec.h264.validator import Report, validate


def _describe(path: str, report: Report) -> str:
    if report.ok:
        return f"{path}: ok ({report.pictures} pictures, {report.mbs} macroblocks, {report.offset} bytes)"
    return (f"{path}: INVALID at byte {report.offset} after {report.pictures} pictures "
            f"({report.mbs} macroblocks): {report.reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanocodec.h264",
        description="Check H.264 Annex-B streams (the paper's settings) the way FFmpeg's strict "
                    "decoder would; exit 1 if any is invalid.")
    parser.add_argument("files", nargs="+", help=".h264 Annex-B streams")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    args = parser.parse_args(argv)
    invalid = 0
    for path in args.files:
        try:
            report = validate(Path(path).read_bytes())
        except OSError as exc:
            report = Report(False, 0, f"cannot read the file: {exc.strerror or exc}", 0, 0)
        invalid += not report.ok
        print(json.dumps({"path": path, **report._asdict()}) if args.json else _describe(path, report))
    if len(args.files) > 1:
        print(f"{len(args.files) - invalid} valid, {invalid} invalid", file=sys.stderr)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
