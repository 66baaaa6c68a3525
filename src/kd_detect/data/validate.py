"""Validator for format-v1 feature files, behind the ``kd-detect check FILE.h5`` command
(:mod:`kd_detect.apps.check`; DESIGN.md §4, §7).

:func:`validate_file` walks the whole file with bounded memory (features, labels and the
label/segment rule are checked ``chunk_steps`` steps at a time), collects every violation
as one line naming the file, the video and the field, and summarises the content.
:func:`format_report` renders the summary and the problems.
:func:`ensure_valid` is what training and prediction call first (through
``FeatureDataModule(validate=True)``): the same rules, the verdict cached per file identity
(:func:`cached_problems`), the first problem raised as one
:class:`~kd_detect.errors.DataValidationError` line.
It never lets an h5py exception escape: unreadable objects become problems.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .format import (
    FEATURE_DTYPES,
    FORMAT_ATTR,
    LABELS,
    RESERVED_NAMES,
    SEGMENTS,
    SUPPORTED_VERSIONS,
    UNLABELLED,
    VIDEOS_GROUP,
)

DEFAULT_CHUNK_STEPS = 4096


@dataclass
class ValidationReport:
    """Result of :func:`validate_file`: ``problems`` (one readable line each, empty when the
    file is valid) and ``summary`` (counts and statistics, see :func:`format_report`)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (str, np.str_)):
        return str(value)
    return None


def _names(value) -> list[str] | None:
    """A 1-D list of strings from an attr, or ``None`` if it is not one."""
    if np.ndim(value) != 1:
        return None
    names = [_text(v) for v in value]
    return None if any(n is None for n in names) else names  # type: ignore[return-value]


class _Checker:
    def __init__(self, path: Path, chunk_steps: int, require_labels: bool) -> None:
        self.path = path
        self.chunk = max(1, int(chunk_steps))
        self.require_labels = require_labels
        self.problems: list[str] = []
        self.classes: list[str] | None = None
        self.modalities: list[str] | None = None
        self.dims: dict[str, tuple[int, str]] = {}  # modality -> (dim, first video)
        self.dtypes: dict[str, Counter] = {}
        self.subsets: Counter = Counter()
        self.lengths: list[int] = []
        self.class_steps: np.ndarray | None = None
        self.class_segments: np.ndarray | None = None
        self.num_segments = 0
        self.version = None
        self.format_state: str | None = None  # "ok", "missing" or "unknown" once the root was read
        self.format_raw: object = None
        self.unchecked_videos: int | None = None  # counted, not checked (unknown format)

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}")

    # ------------------------------------------------------------------ root
    def check_root(self, h5: h5py.File) -> bool:
        """Root attrs; returns False when the rest cannot be interpreted."""
        attrs = h5.attrs
        if FORMAT_ATTR not in attrs:
            self.format_state = "missing"
            self.problem("root", f"attr {FORMAT_ATTR!r} missing (not a kd_detect feature file?)")
        else:
            raw = attrs[FORMAT_ATTR]
            try:
                self.version = int(raw)
            except (TypeError, ValueError):
                self.version = None
            if self.version not in SUPPORTED_VERSIONS:
                shown = raw.item() if isinstance(raw, np.generic) else raw
                shown = shown.decode(errors="replace") if isinstance(shown, bytes) else shown
                self.format_state, self.format_raw, self.version = "unknown", shown, None
                self.problem(
                    "root", f"attr {FORMAT_ATTR!r} = {shown!r} is not a known format version {list(SUPPORTED_VERSIONS)}"
                )
                return False
            self.format_state = "ok"
        if "classes" not in attrs:
            self.problem("root", "attr 'classes' missing (expected a list of class names)")
        else:
            classes = _names(attrs["classes"])
            if not classes:
                self.problem("root", f"attr 'classes' must be a non-empty list of names, got {attrs['classes']!r}")
            else:
                dup = sorted(n for n, k in Counter(classes).items() if k > 1)
                if dup:
                    self.problem("root", f"attr 'classes' has duplicate names {dup}")
                self.classes = classes
        if "modalities" not in attrs:
            self.problem("root", "attr 'modalities' missing (expected a list of modality names)")
        else:
            mods = _names(attrs["modalities"])
            if not mods:
                self.problem(
                    "root", f"attr 'modalities' must be a non-empty list of names, got {attrs['modalities']!r}"
                )
            else:
                bad = sorted(RESERVED_NAMES.intersection(mods))
                if bad:
                    self.problem("root", f"attr 'modalities' uses reserved names {bad}")
                self.modalities = [m for m in mods if m not in RESERVED_NAMES]
        if self.classes is not None:
            self.class_steps = np.zeros(len(self.classes), dtype=np.int64)
            self.class_segments = np.zeros(len(self.classes), dtype=np.int64)
        return True

    # ------------------------------------------------------------------ one video
    def check_video(self, vid: str, group) -> None:
        where = f"video {vid!r}"
        if not isinstance(group, h5py.Group):
            self.problem(where, f"/{VIDEOS_GROUP}/{vid} must be a group, found a {type(group).__name__}")
            return
        subset = group.attrs.get("subset")
        if subset is None:
            self.problem(where, "attr 'subset' missing (expected a string such as 'training')")
        elif _text(subset) is None:
            self.problem(where, f"attr 'subset' must be a string, got {subset!r}")
        else:
            self.subsets[_text(subset)] += 1
        duration = group.attrs.get("duration")
        duration_ok = False
        if duration is None:
            self.problem(where, "attr 'duration' missing (expected seconds > 0)")
        else:
            try:
                duration = float(duration)
                duration_ok = math.isfinite(duration) and duration > 0
            except (TypeError, ValueError):
                duration_ok = False
            if not duration_ok:
                self.problem(where, f"attr 'duration' must be a finite number of seconds > 0, got {duration!r}")

        # modalities: presence, shape, dtype, dims, equal T
        mods = self.modalities
        if mods is None:  # root attr broken: check whatever datasets look like features
            mods = [k for k in group if k not in RESERVED_NAMES and isinstance(group[k], h5py.Dataset)]
        steps: dict[str, int] = {}
        for m in mods:
            ds = group.get(m)
            if ds is None:
                self.problem(where, f"modality {m!r} missing (root attr 'modalities' lists it)")
                continue
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 2:
                shape = getattr(ds, "shape", type(ds).__name__)
                self.problem(where, f"modality {m!r} must be a 2-D (T, D) dataset, got {shape}")
                continue
            if ds.dtype.name not in FEATURE_DTYPES:
                hint = ("; float64 is refused everywhere (check, training, prediction): store float32, "
                        "e.g. ds.astype('float32')") if ds.dtype == np.float64 else ""
                self.problem(where, f"modality {m!r} has dtype {ds.dtype}, expected one of {FEATURE_DTYPES}{hint}")
            self.dtypes.setdefault(m, Counter())[ds.dtype.name] += 1
            dim = int(ds.shape[1])
            ref = self.dims.setdefault(m, (dim, vid))
            if dim != ref[0]:
                self.problem(where, f"modality {m!r} has dim {dim}, expected {ref[0]} (as in video {ref[1]!r})")
            steps[m] = int(ds.shape[0])
        label_steps = self.label_steps(group)
        t_mismatch = self.check_steps(where, steps, label_steps)
        num_steps = max(steps.values()) if steps else None
        if steps and min(steps.values()) == 0:
            self.problem(where, f"zero-length video (T=0 in {[m for m, t in steps.items() if t == 0]})")
        if num_steps is not None:
            self.lengths.append(num_steps)
        for m in steps:
            if group[m].dtype.kind == "f":
                self.check_finite(where, m, group[m])

        # videos of the `unlabelled` subset may lack both fields (format: UNLABELLED)
        required = self.require_labels and (subset is None or _text(subset) != UNLABELLED)
        segments = self.check_segments(where, group, required)
        # a T mismatch was reported above, naming the features: the labels' check skips it
        self.check_labels(where, group, None if t_mismatch else num_steps, segments,
                          duration if duration_ok else None, required)

    @staticmethod
    def label_steps(group: h5py.Group) -> int | None:
        """The labels' T when they are a 2-D dataset (their other faults are check_labels')."""
        ds = group.get(LABELS)
        return int(ds.shape[0]) if isinstance(ds, h5py.Dataset) and ds.ndim == 2 else None

    def check_steps(self, where: str, steps: dict[str, int], label_steps: int | None) -> bool:
        """Every modality and the labels share T. A mismatch names the modalities whose T
        differs from the labels' (or, without labels, from the most common T) with both T;
        when all modalities agree and only the labels differ, it names both sides. Returns
        whether there was a mismatch."""
        if not steps:
            return False
        if label_steps is not None:
            reference, what = label_steps, "field 'labels'"
        else:
            reference = Counter(steps.values()).most_common(1)[0][0]
            what = "the other modalities"
        odd = [m for m, t in steps.items() if t != reference]
        if not odd:
            return False
        if label_steps is None and len(odd) == len(steps):  # pragma: no cover - most_common is one of them
            return False
        others = [m for m in steps if m not in odd]
        if label_steps is not None and others:
            what = f"field 'labels' and modalities {others}"
        verb = "has" if what == "field 'labels'" else "have"
        rule = "(every modality and the labels share T)"
        if not others and len(set(steps.values())) == 1:  # the features agree, the labels do not
            t = steps[odd[0]]
            feats = f"modality {odd[0]!r} has" if len(odd) == 1 else f"modalities {odd} have"
            self.problem(where, f"the features and the labels differ in T: {feats} T={t}, field 'labels' "
                                f"T={reference} {rule}")
        elif len(odd) == 1:
            m = odd[0]
            self.problem(where, f"modality {m!r} has T={steps[m]} but {what} {verb} T={reference} {rule}")
        else:
            found = ", ".join(f"{m!r} (T={steps[m]})" for m in odd)
            self.problem(where, f"modalities {found} differ from {what} (T={reference}) {rule}")
        return True

    def check_finite(self, where: str, m: str, ds: h5py.Dataset) -> None:
        bad, first = 0, None
        try:
            for start in range(0, ds.shape[0], self.chunk):
                chunk = ds[start : start + self.chunk]
                finite = np.isfinite(chunk)
                if not finite.all():
                    rows = np.flatnonzero(~finite.all(axis=1))
                    bad += int((~finite).sum())
                    first = start + int(rows[0]) if first is None else first
        except (OSError, ValueError, TypeError) as err:
            self.problem(where, f"modality {m!r} unreadable (corrupt file?): {err}")
            return
        if bad:
            self.problem(where, f"modality {m!r} has {bad} non-finite values (NaN/inf), first at step {first}")

    def check_segments(self, where: str, group: h5py.Group, required: bool) -> np.ndarray | None:
        if SEGMENTS not in group:
            if not required:  # an unlabelled (prediction) file, or subset 'unlabelled', has neither field
                return None
            self.problem(where, "field 'segments' missing (expected float64 (N, 3) [class_id, start_s, end_s]; "
                                f"videos without annotations belong in subset {UNLABELLED!r})")
            return None
        ds = group[SEGMENTS]
        if not isinstance(ds, h5py.Dataset):
            self.problem(where, "field 'segments' must be a dataset")
            return None
        shape = ds.shape
        if not (len(shape) == 2 and shape[1] == 3) and not (len(shape) >= 1 and int(np.prod(shape)) == 0):
            self.problem(where, f"field 'segments' has shape {shape}, expected (N, 3) [class_id, start_s, end_s]")
            return None
        if ds.dtype.kind not in "fiu":
            self.problem(where, f"field 'segments' has dtype {ds.dtype}, expected float64")
            return None
        try:
            seg = np.asarray(ds[()], dtype=np.float64).reshape(-1, 3)
        except (OSError, ValueError, TypeError) as err:
            self.problem(where, f"field 'segments' unreadable (corrupt file?): {err}")
            return None
        ok = True
        if not np.isfinite(seg).all():
            self.problem(where, "field 'segments' has non-finite values (NaN/inf)")
            return None
        num_classes = len(self.classes) if self.classes is not None else None
        cls = seg[:, 0]
        wrong = (cls != np.round(cls)) | (cls < 0)
        if num_classes is not None:
            wrong |= cls >= num_classes
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            limit = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            self.problem(
                where,
                f"field 'segments' has {int(wrong.sum())} rows with a class id out of range (expected an integer "
                f"in {limit}), e.g. row {i} = {seg[i].tolist()}",
            )
            ok = False
        backwards = seg[:, 1] > seg[:, 2]
        if backwards.any():
            i = int(np.flatnonzero(backwards)[0])
            self.problem(
                where,
                f"field 'segments' has {int(backwards.sum())} rows with start > end, e.g. row {i} = {seg[i].tolist()}",
            )
            ok = False
        self.num_segments += len(seg)
        if ok and self.class_segments is not None:
            np.add.at(self.class_segments, cls.astype(np.int64), 1)
        return seg if ok else None

    def check_labels(
        self, where: str, group: h5py.Group, num_steps: int | None, segments: np.ndarray | None,
        duration: float | None, required: bool,
    ) -> None:
        if LABELS not in group:
            if required:
                self.problem(where, "field 'labels' missing (expected uint8 (T, C) multi-hot; videos without "
                                    f"annotations belong in subset {UNLABELLED!r})")
            return
        ds = group[LABELS]
        if not isinstance(ds, h5py.Dataset):
            self.problem(where, "field 'labels' must be a dataset")
            return
        num_classes = len(self.classes) if self.classes is not None else None
        expected = (num_steps if num_steps is not None else "T", num_classes if num_classes is not None else "C")
        shape_ok = ds.ndim == 2 and (num_steps is None or ds.shape[0] == num_steps) and (
            num_classes is None or ds.shape[1] == num_classes
        )
        if not shape_ok:
            self.problem(where, f"field 'labels' has shape {ds.shape}, expected ({expected[0]}, {expected[1]})")
        if ds.dtype != np.uint8:
            self.problem(where, f"field 'labels' has dtype {ds.dtype}, expected uint8")
        if not shape_ok or ds.dtype.kind not in "iub":
            return
        total = ds.shape[0]
        not_binary, disagree = 0, 0
        rule = segments is not None and duration is not None and total > 0
        if rule:
            times_scale = duration / total
        try:
            for start in range(0, total, self.chunk):
                chunk = ds[start : start + self.chunk]
                not_binary += int((chunk > 1).sum())
                if self.class_steps is not None:
                    self.class_steps += (chunk > 0).sum(axis=0)
                if rule:
                    t = np.arange(start, start + len(chunk), dtype=np.float64) * times_scale
                    want = np.zeros(chunk.shape, dtype=bool)
                    for c, s, e in segments:
                        want[(t > s) & (t < e), int(c)] = True
                    disagree += int(((chunk > 0) != want).any(axis=1).sum())
        except (OSError, ValueError, TypeError) as err:
            self.problem(where, f"field 'labels' unreadable (corrupt file?): {err}")
            return
        if not_binary:
            self.problem(where, f"field 'labels' has {not_binary} values other than 0/1")
        if disagree:
            self.problem(
                where,
                f"field 'labels' disagrees with 'segments' at {disagree} steps (expected labels[i, c] = 1 iff a "
                "segment of class c has start < i*duration/T < end, DESIGN.md §4)",
            )

    # ------------------------------------------------------------------ summary
    def count_unchecked(self, h5: h5py.File) -> None:
        """A file of an unknown format is not checked further, but its summary still gives
        its real video and class counts (read from the group and the attr, unvalidated)."""
        videos = h5.get(VIDEOS_GROUP)
        self.unchecked_videos = len(videos) if isinstance(videos, h5py.Group) else 0
        if "classes" in h5.attrs and self.classes is None:
            self.classes = _names(h5.attrs["classes"])

    def summary(self) -> dict:
        lengths = np.asarray(self.lengths, dtype=np.int64)
        videos = int(sum(self.subsets.values())) if self.subsets else len(self.lengths)
        out: dict = {
            "path": str(self.path),
            "format": self.version,
            "format_state": self.format_state,
            "format_raw": self.format_raw,
            "videos": self.unchecked_videos if self.unchecked_videos is not None else videos,
            "subsets": dict(sorted(self.subsets.items())),
            "classes": list(self.classes or []),
            "modalities": {
                m: {"dim": self.dims[m][0], "dtype": "/".join(sorted(self.dtypes.get(m, {})))}
                for m in (self.modalities or self.dims)
                if m in self.dims
            },
            "segments": self.num_segments,
        }
        if len(lengths):
            out["steps"] = {
                "min": int(lengths.min()),
                "median": float(np.median(lengths)),
                "max": int(lengths.max()),
                "total": int(lengths.sum()),
            }
        if self.class_steps is not None:
            out["class_steps"] = self.class_steps.tolist()
            out["class_segments"] = self.class_segments.tolist()  # type: ignore[union-attr]
        return out


def validate_file(
    path: str | Path, chunk_steps: int = DEFAULT_CHUNK_STEPS, require_labels: bool = True
) -> ValidationReport:
    """Check ``path`` against format v1 (DESIGN.md §4); never raises on a bad file."""
    path = Path(path)
    report = ValidationReport(path)
    checker = _Checker(path, chunk_steps, require_labels)
    if not path.exists():
        checker.problem("", "no such file")
    elif path.is_dir():
        checker.problem("", "is a directory, expected an HDF5 feature file")
    elif not h5py.is_hdf5(path):
        checker.problem("", "not an HDF5 file (expected a kd_detect feature file, DESIGN.md §4)")
    else:
        try:
            with h5py.File(path, "r") as h5:
                if not checker.check_root(h5):
                    checker.count_unchecked(h5)
                else:
                    videos = h5.get(VIDEOS_GROUP)
                    if not isinstance(videos, h5py.Group):
                        checker.problem("root", f"group '/{VIDEOS_GROUP}' missing")
                    elif len(videos) == 0:
                        checker.problem("root", f"group '/{VIDEOS_GROUP}' holds no video")
                    else:
                        for vid in videos:
                            try:
                                checker.check_video(vid, videos.get(vid))
                            except Exception as err:  # corrupt object: report, keep going
                                checker.problem(f"video {vid!r}", f"unreadable ({type(err).__name__}: {err})")
        except Exception as err:  # corrupt file / truncated: never a bare h5py traceback
            checker.problem("", f"unreadable HDF5 file ({type(err).__name__}: {err})")
    report.problems = checker.problems
    report.summary = checker.summary()
    return report


def _class_table(summary: dict, top: int = 5) -> list[str]:
    names = summary.get("classes") or []
    steps = summary.get("class_steps")
    segs = summary.get("class_segments")
    if not names or steps is None:
        return []
    total = max(1, summary.get("steps", {}).get("total", 1))
    order = sorted(range(len(names)), key=lambda c: (-steps[c], c))
    rows = order if len(order) <= 2 * top + 2 else order[:top] + [None] + order[-top:]
    lines = [f"  {'class':<24} {'pos steps':>10} {'(%)':>7} {'segments':>9}"]
    for c in rows:
        if c is None:
            lines.append(f"  ... {len(order) - 2 * top} more classes ...")
            continue
        lines.append(f"  {c:>3} {names[c][:20]:<20} {steps[c]:>10} {100 * steps[c] / total:>6.2f}% {segs[c]:>9}")
    empty = [names[c] for c in range(len(names)) if steps[c] == 0]
    if empty:
        lines.append(f"  classes with no positive step: {len(empty)} ({', '.join(empty[:8])}{' ...' if len(empty) > 8 else ''})")
    return lines


def format_report(report: ValidationReport, max_problems: int = 50) -> str:
    """The human-readable text printed by ``kd-detect check``."""
    s = report.summary
    lines = [f"kd-detect check {report.path}"]
    counts = f"{s.get('videos', 0)} videos, {len(s.get('classes') or [])} classes"
    state = s.get("format_state")
    if state == "ok":
        lines.append(f"  format v{s['format']}, {counts}, {s.get('segments', 0)} segments")
    elif state == "missing":
        lines.append(f"  format unknown (attr {FORMAT_ATTR!r} missing), {counts}, {s.get('segments', 0)} segments")
    elif state == "unknown":
        lines.append(f"  format unknown (attr {FORMAT_ATTR!r} = {s.get('format_raw')!r}; this version reads "
                     f"{', '.join(f'v{v}' for v in SUPPORTED_VERSIONS)}), {counts}; videos not checked")
    if s.get("subsets"):
        lines.append("  subsets: " + ", ".join(f"{k} {v}" for k, v in s["subsets"].items()))
    for m, info in s.get("modalities", {}).items():
        lines.append(f"  modality {m}: dim {info['dim']}, {info['dtype'] or '?'}")
    if "steps" in s:
        st = s["steps"]
        lines.append(f"  T (steps): min {st['min']}, median {st['median']:g}, max {st['max']}, total {st['total']}")
    lines.extend(_class_table(s))
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        lines.extend(f"  {p}" for p in report.problems[:max_problems])
        if len(report.problems) > max_problems:
            lines.append(f"  ... and {len(report.problems) - max_problems} more (use --max-problems)")
    else:
        lines.append("OK: no problems found")
    return "\n".join(lines)
