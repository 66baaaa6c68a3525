"""Toyota Smarthome Untrimmed (TSU) → feature file v1: ``python -m data_prep.tsu --raw DIR --out data/tsu.h5``.

RAW layout::

    smarthome_CS_51.json   (--split CS, default) or smarthome_CV_51.json (--split CV); --annotations
    rgb/<vid>.npy          --rgb-dir   I3D RGB, one feature per 16-frame window, (T, 1, 1, 1024) or (T, 1024)
    pose/<vid>.npy         --pose-dir  pose features (T', D) (any (T', ...) is flattened to (T', -1))
    (optional) --classes FILE          e.g. the release's Action_list, "<id>\\t<name>" lines

Annotations: ``{vid: {subset, duration, actions: [[class, start, end], ...]}}`` with
``duration``, ``start``, ``end`` in **frames** and 0-based class ids (51 classes,
``--num-classes``). Every frame number is divided by ``--fps`` (default 25, written to
the root attr ``fps``) to get seconds; the strict step labels are the same as the
reference loader's, which compares in frame units. Subsets: training/testing. Without
``--classes`` the classes are named ``action_00``..``action_50``.

Resampling rule: the rgb stream defines the video's ``T``. The pose stream (``T'``
rows) is resampled to ``T`` by nearest-by-time indexing: step ``i`` takes pose row
``floor(i * T' / T)`` (identity when ``T' == T``). ``--max-length-mismatch`` therefore
never applies between rgb and pose. A video whose ``T`` is more than 10% (and 3 steps)
away from ``frames / 16`` is kept but noted. Other cleaning rules: :mod:`data_prep._common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from data_prep._annotations import (
    parse_json_annotations,
    parse_modalities,
    read_class_names,
    require_dir,
)
from data_prep._common import (
    ConversionError,
    ConversionOptions,
    ConversionSummary,
    VideoSpec,
    load_npy,
    make_parser,
    resample_to_reference,
    run_cli,
    write_videos,
)

DATASET = "tsu"
NUM_CLASSES = 51
FPS = 25.0
WINDOW = 16
SPLITS = ("CS", "CV")
MODALITIES = ("rgb", "pose")


def convert(
    raw: Path,
    out: Path,
    *,
    split: str = "CS",
    fps: float = FPS,
    annotations: Path | None = None,
    rgb_dir: Path | None = None,
    pose_dir: Path | None = None,
    classes: Path | None = None,
    num_classes: int = NUM_CLASSES,
    modalities: str | Sequence[str] = MODALITIES,
    **common,
) -> ConversionSummary:
    """Convert a TSU release under ``raw`` (split CS or CV) into ``out``."""
    raw = require_dir(Path(raw), "RAW")
    options = ConversionOptions(**common)
    if split not in SPLITS:
        raise ConversionError(f"{DATASET}: --split must be one of {list(SPLITS)}, got {split!r}")
    if not fps > 0:
        raise ConversionError(f"{DATASET}: --fps must be positive, got {fps}")
    mods = parse_modalities(modalities, MODALITIES, DATASET)
    names = read_class_names(Path(classes), expected=num_classes) if classes else [
        f"action_{i:02d}" for i in range(num_classes)
    ]
    ann = Path(annotations) if annotations else raw / f"smarthome_{split}_51.json"
    specs = parse_json_annotations(ann, num_classes=num_classes, time_scale=1.0 / fps)
    dirs = {"rgb": Path(rgb_dir) if rgb_dir else raw / "rgb", "pose": Path(pose_dir) if pose_dir else raw / "pose"}

    def load(spec: VideoSpec) -> dict:
        feats = {m: load_npy(dirs[m] / f"{spec.video_id}.npy", m, flatten=(m == "pose")) for m in mods}
        if "pose" in feats and "rgb" in feats:  # the shared rule, any pose length accepted
            feats = resample_to_reference(feats, "rgb", {"pose": None}, options.max_length_mismatch)
        return feats

    summary = ConversionSummary(DATASET)
    return write_videos(
        Path(out), summary=summary, classes=names, modalities=mods, specs=specs, load=load, options=options,
        attrs={"fps": float(fps), "split": split, "feature_stride": WINDOW},
        expected_steps=(lambda spec: max(round(spec.duration * fps / WINDOW), 1)) if "rgb" in mods else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m data_prep.tsu", "Convert Toyota Smarthome Untrimmed (I3D + pose) to format v1.")
    parser.add_argument("--split", choices=SPLITS, default="CS", help="CS (cross-subject) or CV (cross-view)")
    parser.add_argument("--fps", type=float, default=FPS, help="frame rate of the annotations (default 25)")
    parser.add_argument("--annotations", type=Path, help="default RAW/smarthome_<split>_51.json")
    parser.add_argument("--rgb-dir", type=Path, help="default RAW/rgb")
    parser.add_argument("--pose-dir", type=Path, help="default RAW/pose")
    parser.add_argument("--classes", type=Path, help="class names file (e.g. Action_list)")
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES, help="default 51")
    parser.add_argument("--modalities", default="rgb,pose", help="comma-separated subset of rgb,pose")
    return run_cli(parser, convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
