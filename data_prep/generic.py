"""Your own features and annotations → feature file v1: ``python -m data_prep.generic``.

Inputs::

    --modality rgb=features/rgb   one per modality: a folder of <video_id>.npy or .pt, each (T, D)
    --modality flow               NAME alone means RAW/NAME (--raw RAW); without any --modality,
                                  every sub-folder of RAW holding feature files (rgb first)
    --annotations FILE.csv|.json  rows video,label,start,end [,subset] [,duration]
    --classes FILE                one class name a line (fixes the order); default: sorted labels
    --splits FILE                 "<video_id> <subset>" lines, instead of a subset column
    --metadata FILE.csv           columns video,duration: durations not in the annotations
    --units seconds|frames        of start, end and duration (frames need --fps)
    --fps F --stride S            frames per second and frames per feature step
    --modality-stride NAME=S      a modality extracted at another stride (resampled, see below)
    --unannotated skip|unlabelled  feature files without an annotation row: ignored (default), or
                                  kept as videos of subset 'unlabelled' (features only)

The first modality is the *reference*. With ``make data DATASET=generic RAW=DIR ARGS="..."``
the output is ``data/generic.h5`` and RAW is the root of the modality folders.

Annotations. CSV with a header naming at least ``video,label,start,end`` (optional
``subset``, ``duration``; other columns are ignored), or JSON: a list of objects with the
same keys. One row per action; a row with an empty label is a video with no action (its
times are ignored). Times are seconds, or frames divided by ``--fps`` with ``--units
frames``. Subsets ``training``/``train`` → training, ``testing``/``test`` → testing. A
video's ``subset`` and ``duration`` must agree over its rows. Input errors refused with
one line naming the file, line (or row), video and field: a missing header column, a
non-numeric time or duration, an unknown label (with ``--classes``), an unknown or
conflicting subset, a video without any subset, a subset column together with
``--splits``, a duplicate split line, a video with no way to get its duration.

Duration of a video, first found: the annotation ``duration``, the ``--metadata`` table,
``T × stride / fps`` with ``T`` the reference modality's step count (needs ``--fps`` and
``--stride``).

Videos: those of the annotations (of ``--splits`` too when given). Counted in the summary
(skipped, with examples), never silent: a missing or malformed feature file, modality
lengths that differ beyond the tolerance, a video not in the split file, a split/feature
entry without an annotation row. Segment cleaning (outside the video, clipped, reversed,
zero length) and feature rules (NaN, dims, float16 range) are those of :mod:`data_prep._common`.

Rates. Modalities at the reference's stride whose ``T`` differs by at most
``--max-length-mismatch`` are truncated to the shortest; beyond that the video is
skipped. A modality given another stride by ``--modality-stride`` is resampled to the
reference ``T`` by the shared rule :func:`data_prep._common.resample_to_reference`
(nearest by time, its length checked against the stride ratio).

With ``--unannotated unlabelled`` the reference folder's videos that no annotation row (nor
split line) names are written too, as videos of subset ``unlabelled`` without labels or
segments: a student distils on them (``--data.unlabelled_subset=unlabelled``), nothing is
trained or evaluated on their labels.

Without ``--annotations`` the file is **unlabelled** (features only, no labels or
segments, root attr ``labelled = 0``): every video of the reference folder, subset
``--subset`` (default ``unlabelled``), for ``kd-detect predict``; ``--classes`` (the
training classes) is then required.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from data_prep._annotations import (
    read_class_names,
    require_dir,
    require_file,
)
from data_prep._common import (
    TESTING,
    TRAINING,
    ConversionError,
    ConversionOptions,
    ConversionSummary,
    SkipVideo,
    VideoSpec,
    make_parser,
    resample_to_reference,
    run_cli,
    write_videos,
)
from kd_detect.data.feature_dir import FeatureDirError, list_videos, load_array

DATASET = "generic"
UNITS = ("seconds", "frames")
REQUIRED_COLUMNS = ("video", "label", "start", "end")
SUBSETS = {"training": TRAINING, "train": TRAINING, "testing": TESTING, "test": TESTING}
UNLABELLED = "unlabelled"
#: what becomes of feature files without an annotation row (--unannotated)
UNANNOTATED = ("skip", UNLABELLED)


@dataclass
class Row:
    """One annotation row, as read (times in the file's units, strings stripped)."""

    video: str
    label: str
    start: str
    end: str
    subset: str | None
    duration: str | None
    source: str


# ------------------------------------------------------------------------- parsing
def parse_modality_args(values: Sequence[str], raw: Path | None) -> dict[str, Path]:
    """``["rgb=DIR", "flow"]`` → ``{name: folder}`` (NAME alone = RAW/NAME; none = RAW's sub-folders)."""
    dirs: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        name = name.strip()
        if not name or "/" in name:
            raise ConversionError(f"{DATASET}: --modality expects NAME=DIR or NAME, got {value!r}")
        if name in dirs:
            raise ConversionError(f"{DATASET}: --modality {name!r} given twice")
        if not sep:
            if raw is None:
                raise ConversionError(f"{DATASET}: --modality {name} needs a folder: {name}=DIR, or --raw RAW")
            dirs[name] = raw / name
        else:
            dirs[name] = Path(folder)
    if not dirs:
        if raw is None:
            raise ConversionError(f"{DATASET}: give --modality NAME=DIR (one per modality) or --raw RAW")
        found = sorted(
            d.name for d in require_dir(raw, "RAW").iterdir()
            if d.is_dir() and any(f.suffix in (".npy", ".pt") for f in d.iterdir())
        )
        if not found:
            raise ConversionError(f"{raw}: no sub-folder holds feature files (<video_id>.npy or .pt)")
        found.sort(key=lambda n: n != "rgb")  # rgb, when present, is the reference
        dirs = {n: raw / n for n in found}
    return dirs


def parse_strides(values: Sequence[str], modalities: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or name not in modalities:
            raise ConversionError(
                f"{DATASET}: --modality-stride expects NAME=S with NAME one of {list(modalities)}, got {value!r}"
            )
        try:
            stride = float(number)
        except ValueError:
            stride = float("nan")
        if not (math.isfinite(stride) and stride > 0):
            raise ConversionError(f"{DATASET}: --modality-stride {name}: expected a positive number, got {number!r}")
        out[name] = stride
    return out


def _read_text(path: Path, what: str) -> str:
    require_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: unreadable {what} ({err})") from err


def read_rows(path: Path) -> list[Row]:
    """Annotation rows of a CSV (header required) or a JSON list of objects."""
    text = _read_text(path, "annotation file")
    if path.suffix.lower() == ".json":
        return _json_rows(path, text)
    return _csv_rows(path, text)


def _cell(value: object, where: str, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConversionError(f"{where}: field {name!r} must be a string or number, got {value!r}")
    return str(value).strip()


def _json_rows(path: Path, text: str) -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})") from err
    if not isinstance(data, list):
        raise ConversionError(f"{path}: expected a JSON list of rows {{video, label, start, end[, subset, duration]}}")
    rows = []
    for k, item in enumerate(data):
        where = f"{path}: row {k}"
        if not isinstance(item, dict):
            raise ConversionError(f"{where}: expected an object with keys video, label, start, end")
        missing = [c for c in ("video", "label") if c not in item]
        if missing:
            raise ConversionError(f"{where}: field {missing[0]!r} missing (expected video, label, start, end)")
        cells = {c: _cell(item.get(c), where, c) for c in ("video", "label", "start", "end", "subset", "duration")}
        rows.append(Row(cells["video"], cells["label"], cells["start"], cells["end"],
                        cells["subset"] or None, cells["duration"] or None, where))
    return rows


def _csv_rows(path: Path, text: str) -> list[Row]:
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ConversionError(f"{path}: empty annotation file (expected a header video,label,start,end)") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ConversionError(
            f"{path}:1: header lacks column {missing[0]!r} (expected video,label,start,end[,subset][,duration]), "
            f"got {','.join(header)}"
        )
    col = {name: header.index(name) for name in (*REQUIRED_COLUMNS, "subset", "duration") if name in header}
    rows = []
    try:
        for fields in reader:
            lineno = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            where = f"{path}:{lineno}"
            if len(fields) != len(header):
                raise ConversionError(f"{where}: {len(fields)} fields, expected {len(header)} like the header")
            get = {name: fields[i].strip() for name, i in col.items()}
            rows.append(Row(get["video"], get["label"], get["start"], get["end"],
                            get.get("subset") or None, get.get("duration") or None, where))
    except csv.Error as err:
        raise ConversionError(f"{path}:{reader.line_num}: malformed CSV ({err})") from err
    return rows


def _time(value: str, where: str, name: str, scale: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConversionError(f"{where}: field {name!r} is {value!r}, expected a number") from None
    return number * scale


def read_splits(path: Path) -> dict[str, str]:
    """``<video_id> <subset>`` (space, tab or comma separated) lines → ``{video: subset}``."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(_read_text(path, "split file").splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            raise ConversionError(f"{where}: expected '<video_id> <subset>', got {line.strip()!r}")
        vid, subset = parts
        if subset.lower() not in SUBSETS:
            raise ConversionError(f"{where}: video {vid!r}: subset {subset!r}, expected one of {sorted(SUBSETS)}")
        if vid in out:
            raise ConversionError(f"{where}: video {vid!r} listed twice")
        out[vid] = SUBSETS[subset.lower()]
    return out


def read_metadata(path: Path, scale: float) -> dict[str, float]:
    """A CSV with columns ``video,duration`` (others ignored) → ``{video: seconds}``."""
    reader = csv.reader(_read_text(path, "metadata table").splitlines())
    header = [h.strip().lower() for h in next(reader, [])]
    if "video" not in header or "duration" not in header:
        raise ConversionError(f"{path}:1: header must name columns video and duration, got {','.join(header)}")
    iv, idur = header.index("video"), header.index("duration")
    out: dict[str, float] = {}
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        where = f"{path}:{reader.line_num}"
        if len(fields) != len(header):
            raise ConversionError(f"{where}: {len(fields)} fields, expected {len(header)} like the header")
        vid = fields[iv].strip()
        if vid in out:
            raise ConversionError(f"{where}: video {vid!r} listed twice")
        out[vid] = _time(fields[idur].strip(), f"{where}: video {vid!r}", "duration", scale)
    return out


def build_specs(
    rows: Sequence[Row], classes: list[str] | None, splits: dict[str, str] | None, scale: float
) -> tuple[list[VideoSpec], list[str]]:
    """Group rows into :class:`VideoSpec` (duration ``nan`` when not annotated) and the class list."""
    if splits is not None and any(r.subset for r in rows):
        first = next(r for r in rows if r.subset)
        raise ConversionError(f"{first.source}: a 'subset' column and --splits both given; use one")
    if classes is None:
        classes = sorted({r.label for r in rows if r.label})
        if not classes:
            raise ConversionError("annotations name no label; give --classes FILE")
    index = {name: i for i, name in enumerate(classes)}
    specs: dict[str, VideoSpec] = {}
    for row in rows:
        where = f"{row.source}: video {row.video!r}"
        if not row.video or "/" in row.video:
            raise ConversionError(f"{row.source}: field 'video' is {row.video!r}, expected a non-empty id without '/'")
        subset = None
        if row.subset is not None:
            subset = SUBSETS.get(row.subset.lower())
            if subset is None:
                raise ConversionError(f"{where}: field 'subset' is {row.subset!r}, expected one of {sorted(SUBSETS)}")
        duration = math.nan if row.duration is None else _time(row.duration, where, "duration", scale)
        spec = specs.get(row.video)
        if spec is None:
            spec = specs[row.video] = VideoSpec(row.video, subset or "", duration, [], row.source)
        else:
            if (subset or "") != spec.subset:
                raise ConversionError(
                    f"{where}: field 'subset' is {row.subset!r}, but {spec.source} gives {spec.subset or 'none'!r}"
                )
            if not (math.isnan(duration) and math.isnan(spec.duration)) and not math.isclose(
                duration, spec.duration, rel_tol=1e-9, abs_tol=1e-9
            ):
                raise ConversionError(
                    f"{where}: field 'duration' is {row.duration!r}, but {spec.source} gives another duration"
                )
        if not row.label:
            continue
        if row.label not in index:
            raise ConversionError(
                f"{where}: field 'label' is {row.label!r}, not in the class list ({len(classes)} classes: "
                f"{', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
            )
        start = _time(row.start, where, "start", scale)
        end = _time(row.end, where, "end", scale)
        spec.segments.append((index[row.label], start, end))
    return list(specs.values()), classes


# ----------------------------------------------------------------------- conversion
def convert(
    raw: Path | None,
    out: Path,
    *,
    modality: Sequence[str] = (),
    annotations: Path | None = None,
    classes: Path | None = None,
    splits: Path | None = None,
    metadata: Path | None = None,
    units: str = "seconds",
    fps: float | None = None,
    stride: float | None = None,
    modality_stride: Sequence[str] = (),
    subset: str = UNLABELLED,
    unannotated: str = "skip",
    **common,
) -> ConversionSummary:
    """Convert per-video feature folders (+ annotations) into ``out``; see the module docstring."""
    options = ConversionOptions(**common)
    raw = Path(raw) if raw is not None else None
    if units not in UNITS:
        raise ConversionError(f"{DATASET}: --units must be one of {list(UNITS)}, got {units!r}")
    if unannotated not in UNANNOTATED:
        raise ConversionError(f"{DATASET}: --unannotated must be one of {list(UNANNOTATED)}, got {unannotated!r}")
    for flag, value in (("--fps", fps), ("--stride", stride)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConversionError(f"{DATASET}: {flag} must be a positive number, got {value}")
    if units == "frames" and fps is None:
        raise ConversionError(f"{DATASET}: --units frames needs --fps (frames per second of the annotations)")
    scale = 1.0 / fps if units == "frames" else 1.0  # type: ignore[operator]
    dirs = parse_modality_args(modality, raw)
    mods = list(dirs)
    reference = mods[0]
    strides = parse_strides(modality_stride, mods)
    ref_stride = strides.get(reference, stride)
    if any(m != reference for m in strides) and ref_stride is None:
        raise ConversionError(f"{DATASET}: --modality-stride needs the reference's stride: --stride S")
    rates = {m: ref_stride / s for m, s in strides.items() if m != reference and s != ref_stride}
    try:
        files = {m: list_videos(d, m) for m, d in dirs.items()}
    except FeatureDirError as err:
        raise ConversionError(str(err)) from None

    summary = ConversionSummary(DATASET)
    labelled = annotations is not None
    if labelled:
        names = read_class_names(Path(classes)) if classes else None
        split_map = read_splits(Path(splits)) if splits else None
        specs, names = build_specs(read_rows(Path(annotations)), names, split_map, scale)
        annotated = {s.video_id for s in specs}
        if split_map is not None:
            listed = []
            for spec in specs:
                if spec.video_id in split_map:
                    spec.subset = split_map[spec.video_id]
                    listed.append(spec)
                else:
                    summary.skip(spec.video_id, "annotated but not in the split file")
            for vid in split_map:
                if vid not in annotated:
                    summary.skip(vid, "in the split file but without an annotation row")
            specs = listed
        no_subset = next((s for s in specs if not s.subset), None)
        if no_subset is not None:
            raise ConversionError(
                f"{no_subset.source}: video {no_subset.video_id!r}: no subset; add a 'subset' column "
                "(training/testing) or give --splits FILE"
            )
        for vid, path in files[reference].items():
            if vid not in annotated and (split_map is None or vid not in split_map):
                if unannotated == UNLABELLED:  # features only: a student may distil on it
                    specs.append(VideoSpec(vid, UNLABELLED, math.nan, [], str(path)))
                else:
                    summary.skip(vid, "feature file without an annotation row (ignored)")
    else:
        if classes is None:
            raise ConversionError(
                f"{DATASET}: without --annotations the file is unlabelled (for prediction) and needs --classes FILE "
                "(the class names of the model that will read it)"
            )
        if splits is not None:
            raise ConversionError(f"{DATASET}: --splits needs --annotations")
        names = read_class_names(Path(classes))
        specs = [VideoSpec(vid, subset, math.nan, [], str(path)) for vid, path in files[reference].items()]

    if metadata is not None:
        table = read_metadata(Path(metadata), scale)
        for spec in specs:
            if math.isnan(spec.duration) and spec.video_id in table:
                spec.duration = table[spec.video_id]
    step_seconds = ref_stride / fps if (ref_stride is not None and fps is not None) else None
    undated = next((s for s in specs if math.isnan(s.duration)), None)
    if undated is not None and step_seconds is None:
        raise ConversionError(
            f"{undated.source}: video {undated.video_id!r}: no duration; add a 'duration' column, a --metadata "
            "table, or give --fps and --stride (duration = T x stride / fps)"
        )

    def load(spec: VideoSpec) -> dict[str, np.ndarray]:
        feats = {}
        for m in mods:
            path = files[m].get(spec.video_id)
            if path is None:
                raise SkipVideo(f"missing {m} features")
            try:
                feats[m] = load_array(path, spec.video_id, m)
            except FeatureDirError as err:
                raise SkipVideo(f"unreadable or malformed {m} feature file (expected a (T, D) array)") from err
        if math.isnan(spec.duration):
            spec.duration = len(feats[reference]) * step_seconds  # type: ignore[operator]
        return resample_to_reference(feats, reference, rates, options.max_length_mismatch)

    attrs: dict = {"reference_modality": reference, "units": units}
    if fps is not None:
        attrs["fps"] = float(fps)
    if ref_stride is not None:
        attrs["feature_stride"] = float(ref_stride)
    expected = None
    if step_seconds is not None:
        expected = lambda spec: max(round(spec.duration / step_seconds), 1)  # noqa: E731
    return write_videos(
        Path(out), summary=summary, classes=names, modalities=mods, specs=specs, load=load, options=options,
        attrs=attrs, expected_steps=expected, labelled=labelled,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "python -m data_prep.generic",
        "Convert per-video feature files (one folder per modality) and an annotation table to format v1.",
        raw_help="root of the modality folders (--modality NAME means RAW/NAME); optional",
    )
    parser.add_argument("--modality", action="append", default=[], metavar="NAME=DIR",
                        help="a modality folder of <video_id>.npy/.pt (T, D) files; repeat; the first is the reference")
    parser.add_argument("--annotations", type=Path, help="CSV or JSON rows video,label,start,end[,subset][,duration]; "
                        "without it the file is unlabelled (prediction only)")
    parser.add_argument("--classes", type=Path, help="class names, one a line (default: sorted labels)")
    parser.add_argument("--splits", type=Path, help="'<video_id> <subset>' lines instead of a subset column")
    parser.add_argument("--metadata", type=Path, help="CSV video,duration for durations not in the annotations")
    parser.add_argument("--units", choices=UNITS, default="seconds", help="units of start/end/duration")
    parser.add_argument("--fps", type=float, help="frames per second (for --units frames and T x stride / fps)")
    parser.add_argument("--stride", type=float, help="frames per feature step of the reference modality")
    parser.add_argument("--modality-stride", action="append", default=[], metavar="NAME=S",
                        help="a modality extracted at another stride (resampled to the reference's steps)")
    parser.add_argument("--subset", default=UNLABELLED, help="subset name of an unlabelled file (default unlabelled)")
    parser.add_argument("--unannotated", choices=UNANNOTATED, default="skip",
                        help="feature files that no annotation row names: ignored (skip), or written as videos of "
                             "subset 'unlabelled' without labels, for a student to distil on (unlabelled)")
    return run_cli(parser, convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
