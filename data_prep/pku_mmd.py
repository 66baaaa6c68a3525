"""PKU-MMD (v1) → feature file v1: ``python -m data_prep.pku_mmd --raw DIR --out data/pku_mmd.h5``.

RAW layout::

    Label/<vid>.txt             --label-dir     "label,start_frame,end_frame,confidence" lines
    Skeleton/<vid>.txt          --skeleton-dir  one line per frame, 150 floats (2 persons x 25 joints x xyz)
    Split/cross-subject.txt     --split cross-subject (default) | cross-view;  --split-file FILE
    rgb/<vid>.npy               --rgb-dir       RGB features (T, D) (or (T, 1, ..., 1, D)) at any stride
    (optional) --classes FILE   51 class names (e.g. exported from the release's Actions.xlsx)

Split file: a line ``Training videos:``, a comma-separated id list (may wrap over lines,
spaces ignored, a trailing comma allowed), a line ``Validataion videos:`` (the release's
spelling; ``Validation videos:`` is accepted too), a list. Training → subset
"training", the validation list → "testing". Only the listed videos are converted; an
id listed twice is an input error.

Labels: ``label`` 1..51 → class id ``label - 1``; frames are divided by ``--fps``
(default 30) to get seconds; ``confidence`` (1 or 2 in the release) is read and ignored.
A line without exactly 4 comma-separated integers, or a label outside 1..51, is an input
error naming the file and line. Class names are ``action_01``..``action_51`` (the
release numbering) unless ``--classes`` is given: we do not ship the official names.

Duration = number of skeleton frames / fps. A skeleton line with other than 150 numbers
is an input error (file, line, count). A missing skeleton, label or rgb file skips the
video.

Pose modality (the "pose" stream, 150-d per step), computed from the skeleton:
    1. ``X[f, p, j]`` is person ``p``'s joint ``j`` (xyz) in frame ``f``. A person is
       *present* in a frame when any of its 75 numbers is non-zero; frames where person
       1 is absent are *missing* (the release zero-fills the second person only).
    2. Centring: in every non-missing frame, both persons' joints are expressed
       relative to person 1's spine-base joint (joint 0); an absent 2nd person stays 0.
    3. Scaling: body size ``s`` = median over non-missing frames of the mean distance of
       person 1's 25 joints to its joint 0; all coordinates are divided by ``s``. A video
       with no non-missing frame, or ``s < 1e-6``, is skipped ("degenerate skeleton").
    4. Resampling to the rgb steps: step ``i`` covers ``[i*D/T, (i+1)*D/T)`` seconds
       (``D`` duration, ``T`` rgb steps), i.e. frames ``f`` with
       ``ceil(i*N/T) <= f < ceil((i+1)*N/T)`` (``N`` frames). The step's pose is the mean
       of the non-missing frames of that window; a window holding no frame (``T > N``)
       uses frame ``floor(i*N/T)``; a window with only missing frames is all zeros.
Other cleaning rules (NaN features, clipping, start > end, ...): :mod:`data_prep._common`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from data_prep._annotations import (
    parse_modalities,
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
    load_npy,
    make_parser,
    run_cli,
    write_videos,
)

DATASET = "pku_mmd"
NUM_CLASSES = 51
FPS = 30.0
SPLITS = ("cross-subject", "cross-view")
PERSONS, JOINTS = 2, 25
SKELETON_WIDTH = PERSONS * JOINTS * 3
MODALITIES = ("rgb", "pose")
_TRAIN_HEADER = re.compile(r"^\s*training\s+videos\s*:?\s*$", re.IGNORECASE)
_VAL_HEADER = re.compile(r"^\s*valid(?:ation|ataion)\s+videos\s*:?\s*$", re.IGNORECASE)


def read_split(path: Path) -> dict[str, str]:
    """``{video_id: subset}`` from a release split file (see the module docstring)."""
    require_file(path, "PKU-MMD split file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: unreadable split file ({err})") from err
    subsets: dict[str, str] = {}
    where_seen: dict[str, int] = {}
    current: str | None = None
    headers = set()
    for lineno, line in enumerate(lines, start=1):
        if _TRAIN_HEADER.match(line):
            current = TRAINING
            headers.add(TRAINING)
            continue
        if _VAL_HEADER.match(line):
            current = TESTING
            headers.add(TESTING)
            continue
        ids = [token.strip() for token in line.split(",")]
        ids = [token for token in ids if token]
        if not ids:
            continue
        if current is None:
            raise ConversionError(f"{path}:{lineno}: video ids before a 'Training videos:' line")
        for vid in ids:
            if not re.fullmatch(r"[\w.-]+", vid):
                raise ConversionError(f"{path}:{lineno}: {vid!r} is not a video id (expected e.g. 0002-L)")
            if vid in subsets:
                raise ConversionError(f"{path}:{lineno}: video {vid!r} listed twice (also line {where_seen[vid]})")
            subsets[vid] = current
            where_seen[vid] = lineno
    if headers != {TRAINING, TESTING}:
        raise ConversionError(f"{path}: expected a 'Training videos:' line and a 'Validataion videos:' line")
    return subsets


def read_labels(path: Path, fps: float) -> list[tuple[int, float, float]]:
    """``label,start_frame,end_frame,confidence`` lines → ``(label-1, start_s, end_s)``."""
    segments = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: unreadable label file ({err})") from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.strip().rstrip(",").split(",")]
        try:
            if len(fields) != 4:
                raise ValueError
            label, start, end, _confidence = (int(f) for f in fields)
        except ValueError:
            raise ConversionError(
                f"{path}:{lineno}: expected 4 integers 'label,start_frame,end_frame,confidence', got {line.strip()!r}"
            ) from None
        if not 1 <= label <= NUM_CLASSES:
            raise ConversionError(f"{path}:{lineno}: field 'label' is {label}, expected 1..{NUM_CLASSES}")
        segments.append((label - 1, start / fps, end / fps))
    return segments


def read_skeleton(path: Path) -> np.ndarray:
    """Skeleton file → ``(N, 2, 25, 3)`` float64; a line without 150 numbers is an input error."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: unreadable skeleton file ({err})") from err
    lines = [line for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    tokens: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        row = line.split()
        if len(row) != SKELETON_WIDTH:
            raise ConversionError(
                f"{path}:{lineno}: expected {SKELETON_WIDTH} numbers (2 persons x 25 joints x xyz), got {len(row)}"
            )
        tokens += row
    try:
        values = np.asarray(tokens, dtype=np.float64)
    except ValueError:
        for lineno, line in enumerate(lines, start=1):  # slow path only to name the line
            try:
                np.asarray(line.split(), dtype=np.float64)
            except ValueError:
                raise ConversionError(f"{path}:{lineno}: non-numeric value in a skeleton line") from None
        raise
    return values.reshape(-1, PERSONS, JOINTS, 3)


def skeleton_to_pose(skeleton: np.ndarray, num_steps: int) -> np.ndarray:
    """Centre, scale and resample ``(N, 2, 25, 3)`` frames to ``(num_steps, 150)`` (module docstring)."""
    n = skeleton.shape[0]
    present = np.abs(skeleton).reshape(n, PERSONS, -1).max(axis=2) > 0  # (N, 2)
    valid = present[:, 0]
    if n == 0 or not valid.any():
        raise SkipVideo("degenerate skeleton (no frame with a person)")
    centre = skeleton[:, 0, 0, :]  # (N, 3)
    pose = (skeleton - centre[:, None, None, :]) * present[:, :, None, None]  # absent person: 0
    size = np.median(np.linalg.norm(pose[valid, 0], axis=-1).mean(axis=1))
    if not np.isfinite(size) or size < 1e-6:
        raise SkipVideo("degenerate skeleton (zero body size)")
    pose = pose.reshape(n, -1) / size
    weights = valid.astype(np.float64)  # missing frames never enter a step's mean
    csum = np.concatenate([np.zeros((1, pose.shape[1])), np.cumsum(pose * weights[:, None], axis=0)])
    ccount = np.concatenate([[0.0], np.cumsum(weights)])
    i = np.arange(num_steps, dtype=np.int64)
    lo = (i * n + num_steps - 1) // num_steps  # ceil(i*N/T)
    hi = ((i + 1) * n + num_steps - 1) // num_steps
    empty = hi <= lo
    lo = np.where(empty, (i * n) // num_steps, lo)
    hi = np.where(empty, lo + 1, hi)
    count = ccount[hi] - ccount[lo]
    total = csum[hi] - csum[lo]
    return np.where(count[:, None] > 0, total / np.maximum(count, 1.0)[:, None], 0.0).astype(np.float32)


def convert(
    raw: Path,
    out: Path,
    *,
    split: str = "cross-subject",
    fps: float = FPS,
    split_file: Path | None = None,
    label_dir: Path | None = None,
    skeleton_dir: Path | None = None,
    rgb_dir: Path | None = None,
    classes: Path | None = None,
    **common,
) -> ConversionSummary:
    """Convert a PKU-MMD release under ``raw`` into ``out`` (modalities rgb and pose)."""
    raw = require_dir(Path(raw), "RAW")
    options = ConversionOptions(**common)
    if split not in SPLITS:
        raise ConversionError(f"{DATASET}: --split must be one of {list(SPLITS)}, got {split!r}")
    if not fps > 0:
        raise ConversionError(f"{DATASET}: --fps must be positive, got {fps}")
    mods = parse_modalities(MODALITIES, MODALITIES, DATASET)
    names = read_class_names(Path(classes), expected=NUM_CLASSES) if classes else [
        f"action_{i:02d}" for i in range(1, NUM_CLASSES + 1)
    ]
    subsets = read_split(Path(split_file) if split_file else raw / "Split" / f"{split}.txt")
    labels = Path(label_dir) if label_dir else raw / "Label"
    skeletons = Path(skeleton_dir) if skeleton_dir else raw / "Skeleton"
    rgb = Path(rgb_dir) if rgb_dir else raw / "rgb"
    summary = ConversionSummary(DATASET)

    specs = []
    for vid, subset in subsets.items():
        label_path = labels / f"{vid}.txt"
        # Label files are parsed up front so a malformed one fails before any writing;
        # missing ones are skipped by ``load``, which also sets the duration (NaN until
        # the skeleton is read).
        segments = read_labels(label_path, fps) if label_path.is_file() else []
        specs.append(VideoSpec(vid, subset, math.nan, segments, str(label_path)))

    def load(spec: VideoSpec) -> dict:
        if not (labels / f"{spec.video_id}.txt").is_file():
            raise SkipVideo("missing label file")
        skeleton_path = skeletons / f"{spec.video_id}.txt"
        if not skeleton_path.is_file():
            raise SkipVideo("missing skeleton file")
        skeleton = read_skeleton(skeleton_path)
        if skeleton.shape[0] == 0:
            raise SkipVideo("empty skeleton file")
        if not np.isfinite(skeleton).all():
            raise SkipVideo("non-finite values (NaN/inf) in the skeleton")
        spec.duration = skeleton.shape[0] / fps
        feats = {"rgb": load_npy(rgb / f"{spec.video_id}.npy", "rgb")}
        if len(feats["rgb"]) == 0:
            raise SkipVideo("empty rgb features (0 steps)")
        feats["pose"] = skeleton_to_pose(skeleton, len(feats["rgb"]))
        return feats

    return write_videos(
        Path(out), summary=summary, classes=names, modalities=mods, specs=specs, load=load, options=options,
        attrs={"fps": float(fps), "split": split},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m data_prep.pku_mmd", "Convert PKU-MMD v1 (labels, skeleton, rgb) to format v1.")
    parser.add_argument("--split", choices=SPLITS, default="cross-subject", help="default cross-subject")
    parser.add_argument("--fps", type=float, default=FPS, help="frame rate of labels and skeleton (default 30)")
    parser.add_argument("--split-file", type=Path, help="default RAW/Split/<split>.txt")
    parser.add_argument("--label-dir", type=Path, help="default RAW/Label")
    parser.add_argument("--skeleton-dir", type=Path, help="default RAW/Skeleton")
    parser.add_argument("--rgb-dir", type=Path, help="default RAW/rgb")
    parser.add_argument("--classes", type=Path, help="51 class names, one a line")
    return run_cli(parser, convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
