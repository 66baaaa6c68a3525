"""Machinery shared by the real-dataset converters (``python -m data_prep.<name>``).

Every converter parses its release's annotations into :class:`VideoSpec` rows (times
already in **seconds**, class ids already **0-based**), then hands them to
:func:`write_videos` together with a per-dataset ``load`` function returning the
video's features. This module owns what is common: input errors, the cleaning rules,
feature loading, length alignment, the atomic write through
:class:`kd_detect.data.format.FeatureFileWriter`, the progress bar, the summary and
the CLI skeleton.

Input errors (exit non-zero)
    The input is not what it claims to be: a missing annotation file, a CSV with the
    wrong header, a malformed line or JSON field, a class id outside the class list,
    a duplicate video id. :class:`ConversionError` names the file, the line or video,
    the field and what was expected; the CLI turns it into ``SystemExit`` (status 1)
    and no file is left at ``--out``. A conversion where **no** video survives the
    cleaning also fails, with the summary in the message.

Video cleaning (the video is skipped and counted under its reason, never silently)
    * duration not a positive finite number;
    * a feature file missing, unreadable, or of an unexpected shape (accepted:
      ``(T, D)`` or ``(T, 1, ..., 1, D)``; modalities loaded with ``flatten=True``
      accept any ``(T, ...)`` and flatten the trailing axes);
    * zero steps, NaN/inf anywhere, or (with ``--dtype float16``) values beyond the
      float16 range (±65504) in a modality;
    * a modality whose feature dim differs from the first written video's;
    * modalities whose step counts differ by more than ``--max-length-mismatch``
      (default 2). A difference within the limit is fixed by **truncating every
      modality to the shortest** (dropping the last steps), counted as "truncated".

Segment cleaning, applied in this order to each ``[class, start, end]`` (seconds) of a
written video, each action counted in the summary:
    1. start or end not finite: dropped ("non-finite time");
    2. ``start > end``: with ``--reversed-segments drop`` (default) dropped ("start
       after end"), as the reference loaders and the official Charades evaluation
       give such a row no positive step/frame anyway; with ``swap`` the two times are
       exchanged (counted as "swapped");
    3. ``start == end``: dropped ("zero length");
    4. entirely outside the video (``end <= 0`` or ``start >= duration``): dropped
       ("outside the video");
    5. otherwise clipped to ``[0, duration]`` (counted as "clipped" when a bound moved).
    Kept segments are written in the release order. A video whose actions were all
    dropped is still written (all-zero labels), as are videos without actions.

Labels are not computed here: the writer derives them from the cleaned segments with
the strict rule of DESIGN.md §4 (``start < t_i < end``, ``t_i = i * duration / T``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from kd_detect.data.format import FEATURE_DTYPES, FeatureFileWriter, VideoRecord
from kd_detect.errors import KdDetectError
from kd_detect.io import ensure_writable_file, raise_pending_signal

TRAINING = "training"
TESTING = "testing"
FLOAT16_MAX = float(np.finfo(np.float16).max)
REVERSED_RULES = ("drop", "swap")
#: How many example video ids the summary lists per skip reason.
EXAMPLES_PER_REASON = 5

T = TypeVar("T")


class ConversionError(KdDetectError, ValueError):
    """The raw input is not what it claims to be (or nothing usable remains).

    The message names the file and the line or video, the field and what was expected.
    """


class SkipVideo(Exception):
    """Raised by a dataset ``load`` function: the video is skipped for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class VideoSpec:
    """One annotated video, in the project's units (seconds, 0-based class ids).

    ``segments`` are the release's actions before cleaning, ``(class, start, end)``;
    ``source`` says where the video was read (``file:line`` or ``file``) for messages.
    """

    video_id: str
    subset: str
    duration: float
    segments: list[tuple[int, float, float]] = field(default_factory=list)
    source: str = ""


@dataclass
class ConversionOptions:
    """Options every converter shares (the common CLI flags)."""

    dtype: str = "float16"
    max_length_mismatch: int = 2
    reversed_segments: str = "drop"
    compression: str | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.dtype not in FEATURE_DTYPES:
            raise ConversionError(f"--dtype must be one of {list(FEATURE_DTYPES)}, got {self.dtype!r}")
        if self.reversed_segments not in REVERSED_RULES:
            raise ConversionError(
                f"--reversed-segments must be one of {list(REVERSED_RULES)}, got {self.reversed_segments!r}"
            )
        if int(self.max_length_mismatch) < 0:
            raise ConversionError(f"--max-length-mismatch must be >= 0, got {self.max_length_mismatch}")
        if self.compression in ("", "none"):
            self.compression = None
        if self.compression not in (None, "gzip", "lzf"):
            raise ConversionError(f"--compression must be none, gzip or lzf, got {self.compression!r}")


@dataclass
class ConversionSummary:
    """What a conversion did: videos written/skipped (per reason), segment cleaning."""

    dataset: str
    out: Path | None = None
    num_classes: int = 0
    modalities: list[str] = field(default_factory=list)
    videos_written: int = 0
    per_subset: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    segments_kept: int = 0
    segments_clipped: int = 0
    segments_swapped: int = 0
    segments_dropped: Counter = field(default_factory=Counter)
    truncated_videos: int = 0
    notes: Counter = field(default_factory=Counter)
    note_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def videos_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, video_id: str, reason: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(video_id)

    def note(self, video_id: str, message: str) -> None:
        """A warning about a written video (kept, but worth a look)."""
        self.notes[message] += 1
        examples = self.note_examples.setdefault(message, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(video_id)

    def format(self) -> str:
        """Human-readable multi-line report (what the CLI prints)."""
        subsets = ", ".join(f"{k} {v}" for k, v in sorted(self.per_subset.items())) or "none"
        where = f" to {self.out}" if self.out is not None else ""
        lines = [
            f"{self.dataset}: wrote {self.videos_written} videos{where} ({subsets}); "
            f"{self.num_classes} classes, modalities {', '.join(self.modalities)}"
        ]
        if self.skipped:
            lines.append(f"  skipped {self.videos_skipped} videos:")
            for reason, count in self.skipped.most_common():
                lines.append(f"    {reason}: {count} (e.g. {', '.join(self.skipped_examples[reason])})")
        if self.truncated_videos:
            lines.append(f"  modalities truncated to the shortest: {self.truncated_videos} videos")
        seg = f"  segments: {self.segments_kept} kept, {self.segments_clipped} clipped to the video"
        if self.segments_swapped:
            seg += f", {self.segments_swapped} swapped (start after end)"
        for reason, count in self.segments_dropped.most_common():
            seg += f", {count} dropped ({reason})"
        lines.append(seg)
        for message, count in self.notes.most_common():
            lines.append(f"  note: {message}: {count} videos (e.g. {', '.join(self.note_examples[message])})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- cleaning

def clean_segments(
    segments: Iterable[tuple[int, float, float]],
    duration: float,
    reversed_rule: str,
    summary: ConversionSummary,
) -> np.ndarray:
    """Apply the segment cleaning rules (module docstring) and count them in ``summary``.

    Returns ``(N, 3)`` float64 ``[class, start, end]`` rows.
    """
    kept: list[tuple[float, float, float]] = []
    for cls, start, end in segments:
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end)):
            summary.segments_dropped["non-finite time"] += 1
            continue
        if start > end:
            if reversed_rule == "swap":
                start, end = end, start
                summary.segments_swapped += 1
            else:
                summary.segments_dropped["start after end"] += 1
                continue
        if start == end:
            summary.segments_dropped["zero length"] += 1
            continue
        if end <= 0.0 or start >= duration:
            summary.segments_dropped["outside the video"] += 1
            continue
        clipped_start, clipped_end = max(start, 0.0), min(end, duration)
        if (clipped_start, clipped_end) != (start, end):
            summary.segments_clipped += 1
        kept.append((float(cls), clipped_start, clipped_end))
        summary.segments_kept += 1
    return np.asarray(kept, dtype=np.float64).reshape(-1, 3)


# ------------------------------------------------------------------------ features

def load_npy(path: Path, modality: str, *, flatten: bool = False) -> np.ndarray:
    """Load one feature file as float32 ``(T, D)``; :class:`SkipVideo` on any problem.

    Accepted shapes: ``(T, D)``, ``(T, 1, ..., 1, D)`` (I3D's ``(T,1,1,1024)``); with
    ``flatten=True`` any ``(T, ...)`` with at least 2 axes is reshaped to ``(T, -1)``.
    """
    if not path.is_file():
        raise SkipVideo(f"missing {modality} features")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise SkipVideo(f"unreadable {modality} feature file (not a valid .npy array)") from err
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim < 2:
        raise SkipVideo(f"{modality} features are not a numeric (T, D) array")
    if flatten:
        arr = arr.reshape(arr.shape[0], -1)
    elif arr.ndim > 2:
        if any(d != 1 for d in arr.shape[1:-1]):
            raise SkipVideo(f"{modality} features have shape (T, ..., D) with non-singleton middle axes")
        arr = arr.reshape(arr.shape[0], arr.shape[-1])
    return np.asarray(arr, dtype=np.float32)


def resample_nearest(features: np.ndarray, num_steps: int) -> np.ndarray:
    """Nearest-by-time resampling of ``(T', D)`` to ``num_steps`` rows: row ``i`` is
    source row ``floor(i * T' / T)`` (the source step whose window contains ``t_i``)."""
    src = features.shape[0]
    index = (np.arange(num_steps, dtype=np.int64) * src) // num_steps
    return features[index]


def resample_to_reference(
    features: dict[str, np.ndarray],
    reference: str,
    rates: Mapping[str, float | None],
    max_length_mismatch: int,
) -> dict[str, np.ndarray]:
    """The shared rule for modalities sampled at another rate than ``reference``.

    ``rates[m]`` is modality ``m``'s step rate relative to the reference (steps of ``m``
    per reference step, e.g. ``stride_ref / stride_m``), or ``None`` when unknown. Every
    modality named in ``rates`` is resampled to the reference's ``T`` by
    :func:`resample_nearest` (step ``i`` takes row ``floor(i * T' / T)``, the row whose
    window holds ``t_i``; identity when ``T' == T``). With a known rate ``r``, ``T'`` must
    match ``r * T`` within ``max_length_mismatch`` steps of the coarser stream, i.e.
    ``|T' - r*T| <= max_length_mismatch * max(1, r)``; otherwise :class:`SkipVideo`
    ("modality lengths differ ..."), as for same-rate streams. Modalities not in ``rates``
    are returned unchanged (the same-rate truncation rule of :func:`write_videos` applies).
    """
    steps = len(features[reference])
    out = dict(features)
    for m, rate in rates.items():
        if m == reference or m not in features:
            continue
        src = len(features[m])
        if rate is not None and abs(src - rate * steps) > max_length_mismatch * max(1.0, rate):
            raise SkipVideo(
                f"modality lengths differ by more than {max_length_mismatch} steps "
                f"({m} has {src} steps, expected about {rate:g} x {steps} {reference} steps)"
            )
        if src and steps:
            out[m] = resample_nearest(features[m], steps)
    return out


def _check_features(
    spec: VideoSpec,
    features: dict[str, np.ndarray],
    modalities: Sequence[str],
    dims: dict[str, int],
    options: ConversionOptions,
    summary: ConversionSummary,
) -> dict[str, np.ndarray]:
    """Video-level feature rules of the module docstring; raises :class:`SkipVideo`."""
    for m in modalities:
        arr = features[m]
        if arr.shape[0] == 0:
            raise SkipVideo(f"empty {m} features (0 steps)")
        if not np.isfinite(arr).all():
            raise SkipVideo(f"non-finite values (NaN/inf) in {m} features")
        if options.dtype == "float16" and np.abs(arr).max() > FLOAT16_MAX:
            raise SkipVideo(f"{m} features exceed the float16 range (use --dtype float32)")
        if m in dims and arr.shape[1] != dims[m]:
            raise SkipVideo(f"{m} feature dim differs from the first video's ({dims[m]})")
    lengths = [features[m].shape[0] for m in modalities]
    shortest, longest = min(lengths), max(lengths)
    if longest - shortest > options.max_length_mismatch:
        raise SkipVideo(f"modality lengths differ by more than {options.max_length_mismatch} steps")
    if longest != shortest:
        summary.truncated_videos += 1
        features = {m: features[m][:shortest] for m in modalities}
    return {m: features[m] for m in modalities}


def progress_iter(items: Sequence[T], description: str, enabled: bool | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (off when stderr is not a TTY)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=len(items))
        for item in items:
            yield item
            progress.advance(task)


def write_videos(
    out: Path,
    *,
    summary: ConversionSummary,
    classes: Sequence[str],
    modalities: Sequence[str],
    specs: Sequence[VideoSpec],
    load: Callable[[VideoSpec], dict[str, np.ndarray]],
    options: ConversionOptions,
    attrs: dict | None = None,
    expected_steps: Callable[[VideoSpec], int] | None = None,
    labelled: bool = True,
) -> ConversionSummary:
    """Load, check, clean and write every spec atomically to ``out``.

    ``load(spec)`` returns ``{modality: (T, D) array}`` for ``modalities`` (already
    resampled where the dataset needs it) or raises :class:`SkipVideo`; it may set
    ``spec.duration`` (checked after loading) when the duration comes from the data. When
    ``expected_steps`` is given, a written video whose ``T`` is off by more than
    ``max(3, 10%)`` gets a summary note (kept: the format places steps by duration).
    ``labelled=False`` writes an unlabelled file (features only, for prediction; the
    specs must then carry no segments).
    """
    out = Path(out)
    check_unique_ids(specs)
    summary.out = out
    summary.num_classes = len(classes)
    summary.modalities = list(modalities)
    root_attrs = {
        "dataset": summary.dataset,
        "converter": f"data_prep.{summary.dataset}",
        "max_length_mismatch": int(options.max_length_mismatch),
        "reversed_segments": options.reversed_segments,
    }
    root_attrs.update(attrs or {})
    dims: dict[str, int] = {}
    with FeatureFileWriter(
        out, classes, modalities, dtype=options.dtype, attrs=root_attrs, compression=options.compression,
        labelled=labelled,
    ) as writer:
        for spec in progress_iter(specs, f"{summary.dataset}: converting", options.progress):
            raise_pending_signal()  # a Ctrl-C that a finaliser swallowed (kd_detect.io)
            try:
                loaded = load(spec)  # may set spec.duration (PKU-MMD: from the skeleton)
                if not (math.isfinite(spec.duration) and spec.duration > 0):
                    raise SkipVideo("duration not a positive number")
                features = _check_features(spec, loaded, modalities, dims, options, summary)
            except SkipVideo as skip:
                summary.skip(spec.video_id, skip.reason)
                continue
            num_steps = features[modalities[0]].shape[0]
            if expected_steps is not None:
                expected = expected_steps(spec)
                if abs(num_steps - expected) > max(3, 0.1 * expected):
                    summary.note(spec.video_id, "step count far (>10%) from the expected one for the duration")
            for m in modalities:
                dims.setdefault(m, features[m].shape[1])
            segments = clean_segments(spec.segments, spec.duration, options.reversed_segments, summary)
            writer.add(VideoRecord(spec.video_id, spec.subset, spec.duration, features, segments))
            summary.videos_written += 1
            summary.per_subset[spec.subset] += 1
        if summary.videos_written == 0:
            raise ConversionError(f"no usable video remains, nothing written to {out}\n{summary.format()}")
    return summary


# -------------------------------------------------------------------------- parsing

def check_unique_ids(specs: Sequence[VideoSpec]) -> None:
    """Refuse duplicate video ids, naming both places they were read."""
    seen: dict[str, VideoSpec] = {}
    for spec in specs:
        if spec.video_id in seen:
            raise ConversionError(
                f"{spec.source}: video {spec.video_id!r} appears twice (also at {seen[spec.video_id].source})"
            )
        seen[spec.video_id] = spec


def make_parser(prog: str, description: str, raw_help: str | None = None) -> argparse.ArgumentParser:
    """The common CLI: ``--raw``, ``--out`` and the cleaning/output options.

    ``raw_help`` (given by converters whose inputs all have their own flags) makes
    ``--raw`` optional with that help text.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--raw", type=Path, required=raw_help is None, help=raw_help or "directory holding the public release"
    )
    parser.add_argument("--out", type=Path, required=True, help="output feature file (format v1, .h5)")
    parser.add_argument("--dtype", choices=FEATURE_DTYPES, default="float16", help="feature dtype (default float16)")
    parser.add_argument(
        "--max-length-mismatch", type=int, default=2,
        help="truncate modalities to the shortest when their step counts differ by at most this (default 2), "
        "else skip the video",
    )
    parser.add_argument(
        "--reversed-segments", choices=REVERSED_RULES, default="drop",
        help="what to do with an action whose start is after its end (default drop)",
    )
    parser.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none", help="HDF5 compression")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar (default: only when stderr is a terminal)",
    )
    return parser


def interrupted(prog: str, out: Path | str) -> int:
    """Ctrl-C during a conversion: one line on stderr (the atomic writer removed its
    temporary file; ``out`` is as it was) and the shell's status for SIGINT, 130."""
    print(f"{prog}: interrupted; {out} was not written (or kept its previous content)", file=sys.stderr)
    return 130


def run_cli(
    parser: argparse.ArgumentParser, convert: Callable[..., ConversionSummary], argv: Sequence[str] | None
) -> int:
    """Parse ``argv``, check that ``--out`` can be written (before reading anything), run
    ``convert(**args)``, print the summary.

    A :class:`ConversionError` or any other :class:`~kd_detect.errors.KdDetectError` (an
    unwritable ``--out``, ...) becomes ``SystemExit("prog: error: message")``: one line on
    stderr, status 1. Ctrl-C is one line too, status 130 (:func:`interrupted`).
    """
    args = vars(parser.parse_args(argv))
    raw, out = args.pop("raw"), args.pop("out")
    try:
        ensure_writable_file(out)
        summary = convert(raw, out, **args)
    except KdDetectError as err:
        raise SystemExit(f"{parser.prog}: error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(interrupted(parser.prog, out)) from None
    print(summary.format())
    return 0
