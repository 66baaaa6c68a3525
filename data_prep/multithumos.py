"""MultiTHUMOS → feature file v1: ``python -m data_prep.multithumos --raw DIR --out data/multithumos.h5``.

RAW layout::

    multithumos.json   --annotations   {id: {subset, duration, actions: [[class, start, end], ...]}}
    rgb/<id>.npy       --rgb-dir       I3D RGB, (T, 1, 1, 1024) or (T, 1024)
    flow/<id>.npy      --flow-dir      I3D flow, same
    (optional) --classes FILE          class names, "<id> <name>" or "<name>" lines (e.g. class_list.txt)

Annotations are charades.json-style, times in seconds, class ids **1-based**
(``--class-base 1``, 65 classes, ``--num-classes``); id ``k`` becomes class ``k - 1``. A
class id outside ``1..65`` is an input error naming the file, video and action (a
0-based file needs ``--class-base 0``). Subsets: ``training``/``train`` and
``validation`` (THUMOS'14 validation videos are MultiTHUMOS's training set) →
"training"; ``testing``/``test`` → "testing". Without ``--classes`` the classes are
named ``class_01``..``class_65``.

rgb and flow differing by at most ``--max-length-mismatch`` steps are truncated to the
shortest; the stride of the features is not assumed (no expected-length check). Other
cleaning rules: :mod:`data_prep._common`.
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

DATASET = "multithumos"
NUM_CLASSES = 65
MODALITIES = ("rgb", "flow")
SUBSETS = {"training": TRAINING, "train": TRAINING, "validation": TRAINING, "testing": TESTING, "test": TESTING}


def convert(
    raw: Path,
    out: Path,
    *,
    annotations: Path | None = None,
    rgb_dir: Path | None = None,
    flow_dir: Path | None = None,
    classes: Path | None = None,
    num_classes: int = NUM_CLASSES,
    class_base: int = 1,
    modalities: str | Sequence[str] = MODALITIES,
    **common,
) -> ConversionSummary:
    """Convert a MultiTHUMOS release under ``raw`` into ``out``."""
    raw = require_dir(Path(raw), "RAW")
    options = ConversionOptions(**common)
    if class_base not in (0, 1):
        raise ConversionError(f"{DATASET}: --class-base must be 0 or 1, got {class_base}")
    mods = parse_modalities(modalities, MODALITIES, DATASET)
    names = read_class_names(Path(classes), expected=num_classes) if classes else [
        f"class_{i:02d}" for i in range(1, num_classes + 1)
    ]
    specs = parse_json_annotations(
        Path(annotations) if annotations else raw / "multithumos.json",
        num_classes=num_classes, class_base=class_base, subset_aliases=SUBSETS,
    )
    dirs = {"rgb": Path(rgb_dir) if rgb_dir else raw / "rgb", "flow": Path(flow_dir) if flow_dir else raw / "flow"}

    def load(spec: VideoSpec) -> dict:
        return {m: load_npy(dirs[m] / f"{spec.video_id}.npy", m) for m in mods}

    summary = ConversionSummary(DATASET)
    return write_videos(
        Path(out), summary=summary, classes=names, modalities=mods, specs=specs, load=load, options=options,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m data_prep.multithumos", "Convert MultiTHUMOS (+ I3D features) to format v1.")
    parser.add_argument("--annotations", type=Path, help="default RAW/multithumos.json")
    parser.add_argument("--rgb-dir", type=Path, help="default RAW/rgb")
    parser.add_argument("--flow-dir", type=Path, help="default RAW/flow")
    parser.add_argument("--classes", type=Path, help="class names file")
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES, help="default 65")
    parser.add_argument("--class-base", type=int, choices=(0, 1), default=1, help="first class id in the JSON")
    parser.add_argument("--modalities", default="rgb,flow", help="comma-separated subset of rgb,flow")
    return run_cli(parser, convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
