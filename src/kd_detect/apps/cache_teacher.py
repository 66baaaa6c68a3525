"""``kd-detect cache-teacher --ckpt T.ckpt --data FILE.h5 --out CACHE.h5`` (DESIGN.md §4).

Runs a frozen teacher once over every video and stores its features and logits, so student
runs can read them instead of running the teacher. The cache is written atomically and may
not replace the checkpoint or the data file.
"""

from __future__ import annotations

import argparse
import sys

from kd_detect.apps import main as run_app
from kd_detect.errors import UsageError
from kd_detect.io import ensure_writable_file, refuse_inputs

DESCRIPTION = (
    "Run a frozen teacher once over every video and store its features and logits (DESIGN.md §4), "
    "so student runs can read them instead of running the teacher."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, nargs="+",
                        help="teacher checkpoint; several: the fold teachers of a cross-fitted teacher, each "
                             "video read by the first that did not train on it (kd_detect.modules.cross_fit)")
    parser.add_argument("--data", required=True, help="feature file (HDF5, format v1)")
    parser.add_argument("--out", required=True, help="cache file to write (atomically)")
    parser.add_argument("--subsets", nargs="*", default=None, help="subsets to cache (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float32", help="storage of features")


def run(args: argparse.Namespace) -> int:
    from kd_detect.data.feature_data import FeatureData
    from kd_detect.data.teacher_cache import write_teacher_cache
    from kd_detect.modules.loading import file_sha256, load_detector

    refuse_inputs(args.out, (args.data, *args.ckpt))
    ensure_writable_file(args.out, "teacher cache")  # before the teacher runs, not after
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if len(args.ckpt) == 1:
        teacher, sha = load_detector(args.ckpt[0]), file_sha256(args.ckpt[0])
    else:
        from kd_detect.modules.cross_fit import CrossFittedTeacher, combined_sha256

        teacher = CrossFittedTeacher([load_detector(p) for p in args.ckpt], args.ckpt)
        sha = combined_sha256([file_sha256(p) for p in args.ckpt])
    dm = FeatureData(
        args.data,
        modalities=list(teacher.modalities),
        predict_subset=args.subsets or None,
        eval_batch_size=args.batch_size,
    )
    if list(dm.classes) != list(teacher.classes):
        raise UsageError(f"{args.data}: classes differ from the teacher's ({' '.join(args.ckpt)})")
    out = write_teacher_cache(
        teacher, dm.loader("predict"), args.out, sha, source_file=args.data,
        feature_dtype=args.dtype,
    )
    print(f"wrote teacher cache {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_app("cache-teacher", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
