"""Charades v1 → feature file v1: ``python -m data_prep.charades --raw DIR --out data/charades.h5``.

RAW layout (every part can be pointed elsewhere with a flag)::

    Charades_v1_train.csv   --train-csv   subset "training"
    Charades_v1_test.csv    --test-csv    subset "testing"
    Charades_v1_classes.txt --classes     157 lines "cNNN name" (class id = NNN)
    rgb/<id>.npy            --rgb-dir     I3D RGB, (T, 1, 1, 1024) or (T, 1024)
    flow/<id>.npy           --flow-dir    I3D flow, same
    (optional) --annotations charades.json  replaces the two CSVs

CSV: a header with exactly the 11 columns ``id,subject,scene,quality,relevance,
verified,script,objects,descriptions,actions,length`` (standard CSV quoting, fields may
hold commas and newlines); ``actions`` is ``cNNN start end`` items separated by ``;``
(times in seconds, may be empty); ``length`` (seconds) is the video duration. A wrong
header, a row with another number of fields, a non-numeric ``length`` or a malformed
``actions`` item is an input error naming the file, line, video and field; a class
``cNNN`` outside the class list too.

``--annotations charades.json`` (the PDAN/SuperEvent file): ``{id: {subset, duration,
actions: [[class, start, end], ...]}}`` with 0-based class ids and seconds. Without a
class list the 157 classes are named ``c000``..``c156``.

Features are I3D at stride 8 on 24 fps frames, so a video of ``length`` seconds should
have about ``ceil(round(24 * length) / 8) - 1`` steps; real files differ by a step or
two. The step count is taken from the files as they are (the format places step ``i`` at
``i * length / T``); rgb and flow differing by at most ``--max-length-mismatch`` steps
are truncated to the shortest, otherwise the video is skipped. A video whose ``T`` is
more than 10% (and 3 steps) away from the expected count is kept but noted in the
summary. All other cleaning rules (missing/NaN features, clipping, start > end, ...)
are those of :mod:`data_prep._common`.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Sequence

from data_prep._annotations import (
    parse_json_annotations,
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
    VideoSpec,
    load_npy,
    make_parser,
    run_cli,
    write_videos,
)

DATASET = "charades"
CSV_COLUMNS = (
    "id", "subject", "scene", "quality", "relevance", "verified",
    "script", "objects", "descriptions", "actions", "length",
)
NUM_CLASSES = 157
FPS = 24
STRIDE = 8
MODALITIES = ("rgb", "flow")
_ACTION = re.compile(r"^c(\d+)$")


def expected_steps(length: float) -> int:
    """I3D steps for ``length`` seconds at stride 8 on 24 fps: ``ceil(round(24 L) / 8) - 1``."""
    return max(math.ceil(round(FPS * length) / STRIDE) - 1, 1)


def parse_actions(text: str, num_classes: int, where: str) -> list[tuple[int, float, float]]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` → ``[(92, 11.9, 21.2), (147, 0.0, 12.6)]``."""
    segments = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        parts = item.split()
        match = _ACTION.match(parts[0]) if parts else None
        try:
            if len(parts) != 3 or match is None:
                raise ValueError
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            raise ConversionError(
                f"{where}: field 'actions': item {item!r} is not 'cNNN start end' (items separated by ';')"
            ) from None
        cid = int(match.group(1))
        if cid >= num_classes:
            raise ConversionError(f"{where}: field 'actions': class {parts[0]} not in the class list ({num_classes})")
        segments.append((cid, start, end))
    return segments


def read_csv(path: Path, subset: str, num_classes: int) -> list[VideoSpec]:
    """Parse one Charades_v1_{train,test}.csv into :class:`VideoSpec` rows."""
    require_file(path, "Charades annotation CSV")
    specs = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != CSV_COLUMNS:
                raise ConversionError(
                    f"{path}:1: wrong CSV header: expected {','.join(CSV_COLUMNS)}, got {','.join(header or [])!r}"
                )
            line = reader.line_num
            for row in reader:
                first_line, line = line + 1, reader.line_num
                if not row:
                    continue
                where = f"{path}:{first_line}"
                if len(row) != len(CSV_COLUMNS):
                    raise ConversionError(f"{where}: expected {len(CSV_COLUMNS)} fields, got {len(row)}")
                vid = row[0].strip()
                if not vid:
                    raise ConversionError(f"{where}: field 'id' is empty")
                where = f"{where}: video {vid!r}"
                try:
                    length = float(row[10])
                except ValueError:
                    raise ConversionError(f"{where}: field 'length' must be seconds, got {row[10]!r}") from None
                segments = parse_actions(row[9], num_classes, where)
                specs.append(VideoSpec(vid, subset, length, segments, f"{path}:{first_line}"))
    except csv.Error as err:
        raise ConversionError(f"{path}:{reader.line_num}: malformed CSV ({err})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: unreadable ({err})") from err
    return specs


def convert(
    raw: Path,
    out: Path,
    *,
    annotations: Path | None = None,
    train_csv: Path | None = None,
    test_csv: Path | None = None,
    classes: Path | None = None,
    rgb_dir: Path | None = None,
    flow_dir: Path | None = None,
    modalities: str | Sequence[str] = MODALITIES,
    **common,
) -> ConversionSummary:
    """Convert a Charades release under ``raw`` into the format-v1 file ``out``.

    ``common`` holds the :class:`~data_prep._common.ConversionOptions` fields (dtype,
    max_length_mismatch, reversed_segments, compression, progress).
    """
    raw = require_dir(Path(raw), "RAW")
    options = ConversionOptions(**common)
    mods = parse_modalities(modalities, MODALITIES, DATASET)
    classes_path = Path(classes) if classes else raw / "Charades_v1_classes.txt"
    if annotations is not None:
        if classes is None and not classes_path.is_file():
            names = [f"c{i:03d}" for i in range(NUM_CLASSES)]
        else:
            names = read_class_names(classes_path)
        specs = parse_json_annotations(Path(annotations), num_classes=len(names))
    else:
        names = read_class_names(classes_path)
        specs = read_csv(Path(train_csv) if train_csv else raw / "Charades_v1_train.csv", TRAINING, len(names))
        specs += read_csv(Path(test_csv) if test_csv else raw / "Charades_v1_test.csv", TESTING, len(names))
    dirs = {"rgb": Path(rgb_dir) if rgb_dir else raw / "rgb", "flow": Path(flow_dir) if flow_dir else raw / "flow"}

    def load(spec: VideoSpec) -> dict:
        return {m: load_npy(dirs[m] / f"{spec.video_id}.npy", m) for m in mods}

    summary = ConversionSummary(DATASET)
    return write_videos(
        Path(out), summary=summary, classes=names, modalities=mods, specs=specs, load=load, options=options,
        attrs={"fps": float(FPS), "feature_stride": STRIDE},
        expected_steps=lambda spec: expected_steps(spec.duration),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m data_prep.charades", "Convert Charades v1 (+ I3D features) to format v1.")
    parser.add_argument("--annotations", type=Path, help="charades.json instead of the two CSVs")
    parser.add_argument("--train-csv", type=Path, help="default RAW/Charades_v1_train.csv")
    parser.add_argument("--test-csv", type=Path, help="default RAW/Charades_v1_test.csv")
    parser.add_argument("--classes", type=Path, help="default RAW/Charades_v1_classes.txt")
    parser.add_argument("--rgb-dir", type=Path, help="default RAW/rgb")
    parser.add_argument("--flow-dir", type=Path, help="default RAW/flow")
    parser.add_argument("--modalities", default="rgb,flow", help="comma-separated subset of rgb,flow")
    return run_cli(parser, convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
