"""``kd-detect check FILE.h5``: validate a feature file and print its summary (no torch needed).

Exit status 0 when the file is clean, 1 when it has problems (each printed on one line).
"""

from __future__ import annotations

import argparse
import sys

from kd_detect.apps import main as run_app

DESCRIPTION = "Validate a kd_detect feature file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kd_detect.data.validate import DEFAULT_CHUNK_STEPS

    parser.add_argument("file", help="HDF5 feature file (format v1, DESIGN.md §4)")
    parser.add_argument("--max-problems", type=int, default=50, help="problems printed (all are counted)")
    parser.add_argument("--chunk-steps", type=int, default=DEFAULT_CHUNK_STEPS, help="steps read at a time")
    parser.add_argument("--no-labels", action="store_true", help="allow videos without 'labels' (prediction files)")


def run(args: argparse.Namespace) -> int:
    from kd_detect.data.validate import format_report, validate_file

    report = validate_file(args.file, chunk_steps=args.chunk_steps, require_labels=not args.no_labels)
    print(format_report(report, max_problems=args.max_problems))
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    return run_app("check", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
