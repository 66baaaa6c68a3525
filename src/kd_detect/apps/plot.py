"""``kd-detect plot RUN_DIR [--video ID] [--rgb-run DIR] [--teacher-run DIR] [--data FILE]``.

Draws a run's pictures into ``RUN_DIR/plots`` (what they show: :mod:`kd_detect.plots.figures`;
which runs are compared: :mod:`kd_detect.plots.runs`).
"""

from __future__ import annotations

import argparse
import sys

from kd_detect.apps import main as run_app

DESCRIPTION = (
    "Draw a run's pictures into RUN_DIR/plots: timeline of one test video (ground truth vs "
    "RGB-only vs KD student vs teacher), boundary saliency + global relations, per-class AP gain."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (runs/<EXP>/ with best.ckpt and config.yaml)")
    parser.add_argument("--video", default=None, help="video id (default: the test video with most segments)")
    parser.add_argument("--rgb-run", default=None, help="RGB-only run directory (default: sibling <dataset>_rgb)")
    parser.add_argument("--teacher-run", default=None, help="teacher run directory (default: the student's teacher)")
    parser.add_argument("--data", default=None, help="feature file (default: data.path of the run's config)")
    parser.add_argument("--subset", default=None, help="subset to evaluate (default: the config's test_subset)")
    parser.add_argument("--max-classes", type=int, default=8, help="classes shown in the timeline")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kd_detect.io import ensure_writable_dir
    from kd_detect.plots.runs import make_plots

    # before any model runs; creates nothing (a mistyped RUN_DIR is make_plots' error)
    ensure_writable_dir(Path(args.run_dir) / "plots", "plots folder", create=False)
    written = make_plots(args.run_dir, args.video, args.rgb_run, args.teacher_run, args.data, args.subset,
                         max(1, args.max_classes))
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_app("plot", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
