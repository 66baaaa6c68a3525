"""Every error a user can fix, in one place (the bottom layer: imports nothing of kd_detect).

The command line prints a :class:`KdDetectError` as one line, ``kd-detect <cmd>: error: msg``,
and exits with status 1; any other exception is a bug and keeps its traceback. Messages name
the file (and the video and field when relevant) and what was expected.

The classes that were ``ValueError`` before keep that base too, so ``except ValueError``
in callers still catches them.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class KdDetectError(Exception):
    """Base class of every user-facing error of kd_detect."""


class UsageError(KdDetectError):
    """Bad command-line input (an option value, a missing run directory, ...)."""


class UnwritableOutputError(UsageError):
    """An output file or folder cannot be written where it was asked for (a read-only or
    virtual folder, a file where a folder should be, a folder where a file should be)."""


class ConfigError(KdDetectError, ValueError):
    """An experiment file cannot be read or composed (names the file)."""


class FeatureFileError(KdDetectError, ValueError):
    """A feature file (or a video/field in it) is not what format v1 promises.

    The message always names the file and, where relevant, the video and field.
    """


class FeatureDirError(KdDetectError, ValueError):
    """A per-video feature folder or file (``kd_detect.data.feature_dir``) is not what it
    should be; the message names the folder or file, the video and what was expected."""


class DataValidationError(FeatureFileError):
    """A feature file fails the checks of ``kd-detect check`` when a command validates it
    before use (training, prediction); the message gives the first problem line(s)."""


class StaleCacheError(FeatureFileError):
    """A teacher cache does not belong to the teacher checkpoint or data it is used with."""


class CheckpointError(KdDetectError, ValueError):
    """A checkpoint is missing, unreadable or of the wrong kind (the message names the file)."""


class TeacherCompatibilityError(KdDetectError, ValueError):
    """A teacher (checkpoint or cache) does not fit the student or the data."""


class TrainingInterrupted(KdDetectError):
    """A fit stopped by SIGTERM: the message says where ``last.ckpt`` is and how to resume."""


class OutputIsInputError(KdDetectError):
    """A command was asked to write its output over one of its own inputs."""


def find_user_error(err: BaseException | None) -> KdDetectError | None:
    """The :class:`KdDetectError` behind ``err`` (jsonargparse wraps errors raised while
    instantiating classes in its own), or ``None`` when there is none: a bug."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KdDetectError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Print a :class:`KdDetectError` (also one wrapped by jsonargparse) as
    ``prog: error: message`` and exit with status 1; Ctrl-C is ``prog: interrupted`` and
    status 130 (the shell's for SIGINT); every other exception propagates."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 - re-raised unless it is one of ours
        found = find_user_error(err)
        if found is None:
            raise
        print(f"{prog}: error: {found}", file=sys.stderr)
        raise SystemExit(1) from None
