"""The command line the stream validators share: `python -m nanocodec.huffman|h264 FILE... [--json]`.

Owns the loop over files, the JSON form, the tally and the exit status (1 if any file is invalid);
an unreadable file is reported as invalid, never a traceback. Each validator brings its own
verdicts (`validate`), the Report it gives an unreadable file, and its one-line description.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple


def check_files(argv: list[str] | None, *, prog: str, description: str, files_help: str,
                validate: Callable[[bytes], NamedTuple], unreadable: Callable[[str], NamedTuple],
                describe: Callable[[str, Any], str]) -> int:
    """Validate each file named in `argv`, print one line (or JSON object) each; the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("files", nargs="+", help=files_help)
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    args = parser.parse_args(argv)
    invalid = 0
    for path in args.files:
        try:
            report = validate(Path(path).read_bytes())
        except OSError as exc:
            report = unreadable(f"cannot read the file: {exc.strerror or exc}")
        invalid += not report.ok
        print(json.dumps({"path": path, **report._asdict()}) if args.json else describe(path, report))
    if len(args.files) > 1:
        print(f"{len(args.files) - invalid} valid, {invalid} invalid", file=sys.stderr)
    return 1 if invalid else 0
