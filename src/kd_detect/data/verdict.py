"""Validate a feature file once, before a command uses it (training, prediction, caching):
:func:`ensure_valid` runs :func:`~kd_detect.data.validate.validate_file` (the rules of
``kd-detect check``) and caches the verdict per file identity, never beside the data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from kd_detect.errors import DataValidationError, KdDetectError
from kd_detect.io import atomic_write, file_identity

from .validate import validate_file

# Bump when the rules of validate_file change: cached verdicts of older rules are ignored.
RULES_VERSION = 2  # 2: videos of subset 'unlabelled' may lack labels and segments
_CACHE_ENV = "KD_DETECT_CACHE_DIR"


def verdict_cache_dir() -> Path:
    """Where cached verdicts live: ``$KD_DETECT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kd_detect``,
    else ``~/.cache/kd_detect`` (never beside the data: the data folder may be read-only)."""
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kd_detect"


def _verdict_path(identity: dict, require_labels: bool) -> Path:
    key = json.dumps([RULES_VERSION, bool(require_labels), identity], sort_keys=True)
    return verdict_cache_dir() / "validated" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def cached_problems(path: str | Path, require_labels: bool = True) -> tuple[list[str], int, bool]:
    """``(first problems, total count, from cache)`` of :func:`validate_file` on ``path``.

    The verdict is cached under the file identity (:func:`kd_detect.io.file_identity`:
    size, mtime_ns and a hash of the first/last MiB), the rules version and
    ``require_labels``, so validating the same file again reads 2 MiB instead of the file.
    A cache that cannot be read or written is ignored (the file is then validated again)."""
    path = Path(path)
    identity = file_identity(path)
    cache = _verdict_path(identity, require_labels)
    try:
        data = json.loads(cache.read_text())
        return list(data["problems"]), int(data["count"]), True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    report = validate_file(path, require_labels=require_labels)
    first = report.problems[:3]
    try:
        with atomic_write(cache) as tmp:
            tmp.write_text(json.dumps({"file": str(path), "identity": identity, "problems": first,
                                       "count": len(report.problems)}))
    except (OSError, KdDetectError):  # read-only home / cache: validate again next time
        pass
    return first, len(report.problems), False


def ensure_valid(path: str | Path, require_labels: bool = True) -> None:
    """Raise :class:`~kd_detect.errors.DataValidationError` with the first problem line(s)
    (each names the file, the video and the field) when ``path`` fails :func:`validate_file`."""
    first, count, _ = cached_problems(path, require_labels)
    if count:
        more = f" (and {count - 1} more problem(s))" if count > 1 else ""
        raise DataValidationError(
            first[0] + more + f". Run `kd-detect check {path}` for the full report, "
            "or set --data.validate=false to skip this check on a trusted file"
        )
