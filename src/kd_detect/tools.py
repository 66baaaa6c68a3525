"""The non-Lightning subcommands of ``kd-detect`` (check, cache-teacher, export, plot).

Each takes its argv and returns an exit status; errors the user can fix are one clear
line on stderr and status 1 or 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Iterator


class UsageError(Exception):
    """Bad input the user can fix; printed as one line."""


def known_error(err: BaseException) -> BaseException | None:
    """The package's own input error behind ``err`` (jsonargparse wraps errors raised while
    instantiating classes), or ``None`` when ``err`` is not one of ours."""
    from kd_detect.config import ConfigError
    from kd_detect.data.format import FeatureFileError
    from kd_detect.modules.loading import CheckpointError
    from kd_detect.modules.student import TeacherCompatibilityError

    ours = (FeatureFileError, CheckpointError, TeacherCompatibilityError, ConfigError, UsageError)
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ours):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def user_errors(prog: str, also: tuple[type[BaseException], ...] = (ValueError, KeyError)) -> Iterator[None]:
    """Turn the package's known input errors into ``prog: error: message`` + exit status 1."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised below unless it is a known input error
        found = known_error(err) or (err if isinstance(err, also) else None)
        if found is None:
            raise
        message = found.args[0] if isinstance(found, KeyError) and found.args else found
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def check(argv: list[str]) -> int:
    """``kd-detect check FILE.h5``: validate a feature file and print its summary."""
    from kd_detect.data.validate import main as validate_main

    return validate_main(argv)


def cache_teacher(argv: list[str]) -> int:
    """``kd-detect cache-teacher --ckpt T.ckpt --data FILE.h5 --out CACHE.h5``."""
    parser = argparse.ArgumentParser(
        prog="kd-detect cache-teacher",
        description="Run a frozen teacher once over every video and store its features and logits "
        "(DESIGN.md §4), so student runs can read them instead of running the teacher.",
    )
    parser.add_argument("--ckpt", required=True, help="teacher checkpoint")
    parser.add_argument("--data", required=True, help="feature file (HDF5, format v1)")
    parser.add_argument("--out", required=True, help="cache file to write (atomically)")
    parser.add_argument("--subsets", nargs="*", default=None, help="subsets to cache (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float32", help="storage of features")
    args = parser.parse_args(argv)
    with user_errors(parser.prog):
        from kd_detect.data.datamodule import FeatureDataModule
        from kd_detect.data.teacher_cache import write_teacher_cache
        from kd_detect.modules.loading import file_sha256, load_detector

        teacher = load_detector(args.ckpt)
        subsets = args.subsets
        dm = FeatureDataModule(
            args.data,
            modalities=list(teacher.modalities),
            predict_subset=subsets or None,
            eval_batch_size=args.batch_size,
        )
        if list(dm.classes) != list(teacher.classes):
            raise UsageError(f"{args.data}: classes differ from the teacher's ({args.ckpt})")
        dm.setup("predict")
        out = write_teacher_cache(
            teacher, dm.predict_dataloader(), args.out, file_sha256(args.ckpt), source_file=args.data,
            feature_dtype=args.dtype,
        )
        print(f"wrote teacher cache {out}")
    return 0


def export(argv: list[str]) -> int:
    from kd_detect.export import main as export_main

    return export_main(argv)


def plot(argv: list[str]) -> int:
    from kd_detect.plots import main as plot_main

    return plot_main(argv)
