"""``kd-detect predict --ckpt CKPT --data FILE.h5 | --features DIR --out preds.h5``: per-step
probabilities (DESIGN.md §7).

The model is anything :func:`kd_detect.modules.inference.load_for_inference` loads: a
kd_detect checkpoint (a student without its teachers) or an exported RGB-only model
(TorchScript ``student.pt`` or ``student.state.pt``).

The feature file needs only the modalities the model reads (``rgb`` for a student) and no
labels. The output is an HDF5 prediction file, written atomically
(:func:`kd_detect.io.atomic_write`; never over ``--data`` or ``--ckpt``)::

    /                    attrs: classes = [str, ...]   (the model's class names)
    /videos/<id>/scores  float32 (T, C) probabilities over the video's valid steps
                         (group attrs: duration in seconds)

``--features DIR`` (in place of ``--data``; RGB-only models) reads a folder of per-video RGB
feature files, ``<video_id>.npy`` or ``.pt`` of shape ``(T, D)``
(:mod:`kd_detect.data.feature_dir`), with no HDF5 step. ``DIR`` is the RGB folder itself or,
when it has an ``rgb/`` sub-folder, the root of a ``features/<modality>/`` layout (then
``DIR/rgb`` is read; other sub-folders are ignored). Every video of the folder is predicted,
batched longest first like ``--data`` (so the batches, and the scores, are the same); the
model's input dim must equal the files' ``D``. The duration of a video (in
seconds; it places the segments and is stored with the scores) is, first found:

* its row of ``--durations FILE.csv`` (columns ``video,duration``, seconds), else
* ``T × step``, ``step = --step-seconds`` or ``--stride / --fps`` (the extractor's stride in
  frames and the video's frame rate) — the rule ``data_prep.generic`` uses, so both routes
  give the same durations;

a video with neither is refused. The features are used as float32, as a ``--dtype float32``
file converted from the same folder holds them: the scores are the same as with ``--data``.

With ``--segments FILE.jsonl``, action segments extracted by
:func:`kd_detect.metrics.extract_segments` (threshold, merge gap, minimum length) are written
one JSON object per line: ``{"video", "class" (name), "start", "end", "score"}`` (seconds).
``--threshold auto`` extracts them at the threshold the model's validation chose (a model
trained with ``event_map: true, event_threshold: auto``; kept in its checkpoint and its
exports); a model without one is refused in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from kd_detect.apps import main as run_app
from kd_detect.errors import UsageError
from kd_detect.io import atomic_write, ensure_writable_file, refuse_inputs

DESCRIPTION = (
    "Per-step action probabilities of every video of a feature file, from a kd_detect "
    "checkpoint or an exported RGB-only model; optional action segments as JSON lines."
)


def iter_scores(
    predictor: Any, loader: Any, durations: Mapping[str, float] | None = None, step_seconds: float | None = None
) -> Iterator[tuple[str, float, np.ndarray]]:
    """``(video_id, duration, scores (T, C) float32)`` per video of ``loader``'s batches.

    The duration is ``durations[video_id]`` (float64, e.g. the file's values), else
    ``T × step_seconds`` when given, else the batch's float32 ``duration``."""
    from kd_detect.modules.inference import iter_videos

    durations = durations or {}
    for vid, probs, _, meta in iter_videos(predictor, loader):
        if vid in durations:
            duration = float(durations[vid])
        elif step_seconds is not None:
            duration = probs.shape[0] * float(step_seconds)
        else:
            duration = float(meta["duration"])
        yield vid, duration, probs.numpy().astype(np.float32)


def resolve_threshold(threshold: float | str, predictor: Any) -> float:
    """``threshold``, or for ``"auto"`` the threshold the model's validation chose."""
    from kd_detect.config import AUTO

    if threshold != AUTO:
        return float(threshold)
    if predictor.event_threshold is None:
        raise UsageError(
            f"{predictor.source}: --threshold auto uses the segment threshold chosen on validation, and this "
            f"{predictor.kind} has none (train with --model.init_args.event_map=true "
            "--model.init_args.event_threshold=auto); give --threshold P"
        )
    return predictor.event_threshold


def write_predictions(
    predictor: Any,
    loader: Any,
    out: str | os.PathLike,
    segments_out: str | os.PathLike | None = None,
    threshold: float = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
    attrs: dict[str, Any] | None = None,
    durations: Mapping[str, float] | None = None,
    inputs: tuple[str | os.PathLike, ...] = (),
    step_seconds: float | None = None,
) -> tuple[int, int]:
    """Run ``predictor`` over ``loader`` and write the prediction file (and segments, times
    rounded to the microsecond). Both files are written atomically and never over one of
    ``inputs``. Durations as in :func:`iter_scores`. Returns ``(videos, segments)`` counts."""
    import h5py

    if segments_out is not None:
        from kd_detect.metrics.event_map import extract_segments

    segments: dict[str, list[dict[str, Any]]] = {}
    n_videos = 0
    with atomic_write(out, inputs=inputs) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["classes"] = predictor.classes
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value
            videos = h5.create_group("videos")
            for vid, duration, scores in iter_scores(predictor, loader, durations, step_seconds):
                group = videos.create_group(vid)
                group.attrs["duration"] = duration
                group.create_dataset("scores", data=scores)
                n_videos += 1
                if segments_out is not None:
                    segments[vid] = [
                        {"video": vid, "class": predictor.classes[c], "start": round(start, 6), "end": round(end, 6),
                         "score": round(score, 6)}
                        for c, start, end, score in extract_segments(scores, duration, threshold, merge_gap, min_length)
                    ]
        if segments_out is not None:
            with atomic_write(segments_out, inputs=(*inputs, out)) as seg_tmp, open(seg_tmp, "w") as fh:
                for vid in sorted(segments):
                    for row in segments[vid]:
                        fh.write(json.dumps(row) + "\n")
    return n_videos, sum(len(v) for v in segments.values())


def predict(
    ckpt: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    subset: str | list[str] | None = None,
    segments: str | os.PathLike | None = None,
    threshold: float | str = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[int, int]:
    """Predict every video of ``subset`` (all with ``None``) of ``data``; see module docstring."""
    from kd_detect.data.feature_data import FeatureData
    from kd_detect.modules.inference import check_data, load_for_inference

    for target in (out, segments):
        if target is not None:
            refuse_inputs(target, (data, ckpt))
    predictor = load_for_inference(ckpt, device)
    threshold = resolve_threshold(threshold, predictor)
    check_data(predictor, data)
    dm = FeatureData(
        str(data),
        modalities=predictor.modalities,
        predict_subset=subset,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        require_labels=False,
    )
    if list(dm.classes) != predictor.classes:
        print(
            f"kd-detect predict: note: {data} names classes {dm.classes[:3]}… ({dm.num_classes}), the model "
            f"{predictor.classes[:3]}… ({len(predictor.classes)}); scores follow the model's classes",
            file=sys.stderr,
        )
    try:
        return write_predictions(
            predictor, dm.loader("predict"), out, segments, threshold, merge_gap, min_length,
            attrs={"source_checkpoint": str(ckpt), "source_data": str(data)},
            durations=dm.feature_file.durations, inputs=(data, ckpt),
        )
    finally:
        dm.close()


def rgb_folder(features: str | os.PathLike) -> Path:
    """The folder read by ``--features DIR``: ``DIR/rgb`` when it is a folder, else ``DIR``."""
    root = Path(features)
    return root / "rgb" if (root / "rgb").is_dir() else root


def predict_features(
    ckpt: str | os.PathLike,
    features: str | os.PathLike,
    out: str | os.PathLike,
    segments: str | os.PathLike | None = None,
    threshold: float | str = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
    batch_size: int = 8,
    device: str = "cpu",
    step_seconds: float | None = None,
    durations: str | os.PathLike | None = None,
) -> tuple[int, int]:
    """Predict every video of the RGB feature folder ``features``; see module docstring."""
    from torch.utils.data import DataLoader

    from kd_detect.data.dataset import VideoCollate
    from kd_detect.data.feature_dir import FeatureDirDataset, list_videos, read_durations, read_steps
    from kd_detect.errors import FeatureDirError
    from kd_detect.modules.inference import RGB, load_for_inference

    folder = rgb_folder(features)
    files = list_videos(folder, RGB)
    inputs = (features, folder, ckpt, durations, *files.values())
    for target in (out, segments):
        if target is not None:
            refuse_inputs(target, inputs)
    table = None if durations is None else read_durations(durations)
    predictor = load_for_inference(ckpt, device)
    threshold = resolve_threshold(threshold, predictor)
    if predictor.modalities != [RGB]:
        raise FeatureDirError(
            f"{folder}: --features gives RGB features only, the model ({predictor.source}, {predictor.kind}) "
            f"reads modalities {predictor.modalities}; use --data with a feature file that has them"
        )
    absent = [vid for vid in files if step_seconds is None and vid not in (table or {})]
    if absent:
        raise FeatureDirError(
            f"{durations or folder}: video {absent[0]!r} ({files[absent[0]]}) has no duration ({len(absent)} video(s) "
            "without one); add a row, or give --fps and --stride (duration = T x stride / fps)"
        )
    steps = {vid: read_steps(path, vid, RGB) for vid, path in files.items()}
    order = sorted(files, key=lambda vid: -steps[vid])  # longest first, as --data batches (stable: id order)
    dataset = FeatureDirDataset(folder, RGB, order, step_seconds=step_seconds, durations=table, dtype="float32")
    expected = predictor.modality_dims[RGB]
    if dataset.dim != expected:
        raise FeatureDirError(
            f"{folder}: video {dataset.video_ids[0]!r}: rgb features have dim {dataset.dim}, "
            f"the model ({predictor.source}) expects {expected}"
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=VideoCollate(len(predictor.classes)))
    return write_predictions(
        predictor, loader, out, segments, threshold, merge_gap, min_length,
        attrs={"source_checkpoint": str(ckpt), "source_features": str(folder)},
        durations=dataset.durations, inputs=tuple(i for i in inputs if i is not None), step_seconds=step_seconds,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="kd_detect .ckpt, exported TorchScript .pt or .state.pt")
    parser.add_argument("--data", default=None, help="feature file (HDF5, format v1); labels not needed")
    parser.add_argument("--features", default=None,
                        help="in place of --data (RGB-only models): a folder of <video_id>.npy/.pt (T, D) RGB "
                             "features, or a root with an rgb/ sub-folder")
    parser.add_argument("--subset", nargs="+", default=None, help="--data: subset(s) to predict (default: every video)")
    parser.add_argument("--out", required=True, help="prediction file to write (HDF5)")
    parser.add_argument("--segments", default=None, help="also write action segments to this .jsonl file")
    parser.add_argument("--threshold", type=threshold_arg, default=0.5,
                        help="segments: probability threshold, or 'auto': the one the model's validation chose")
    parser.add_argument("--merge-gap", type=float, default=0.0, help="segments: merge runs this close (seconds)")
    parser.add_argument("--min-length", type=float, default=0.0, help="segments: drop shorter ones (seconds)")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="--features: seconds per feature step (duration = T x step)")
    parser.add_argument("--fps", type=float, default=None, help="--features: frame rate (with --stride: step = stride/fps)")
    parser.add_argument("--stride", type=float, default=None, help="--features: extractor stride in frames (with --fps)")
    parser.add_argument("--durations", default=None,
                        help="--features: CSV video,duration (seconds); takes precedence over the step rule")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def threshold_arg(value: str) -> float | str:
    """``--threshold``: a probability in [0, 1] or ``auto``."""
    from kd_detect.config import threshold_setting

    try:
        return threshold_setting(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def step_seconds_of(args: argparse.Namespace) -> float | None:
    """``--step-seconds``, or ``--stride / --fps`` (both needed), or ``None`` with neither;
    with ``None`` every video needs a row in ``--durations``."""
    if args.subset is not None:
        raise UsageError("--subset selects videos of a --data file; --features predicts every video of the folder")
    for name in ("step_seconds", "fps", "stride"):
        value = getattr(args, name)
        if value is not None and not (np.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if args.step_seconds is not None:
        if args.fps is not None or args.stride is not None:
            raise UsageError("give either --step-seconds or --fps and --stride, not both")
        return float(args.step_seconds)
    if (args.fps is None) != (args.stride is None):
        raise UsageError("--fps and --stride go together (step = stride / fps seconds)")
    if args.fps is None:
        if args.durations is None:
            raise UsageError(
                "--features needs the videos' durations: --fps F --stride S (duration = T x S / F), "
                "--step-seconds, or --durations FILE.csv"
            )
        return None
    return float(args.stride) / float(args.fps)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.merge_gap < 0 or args.min_length < 0:
        raise UsageError("--merge-gap and --min-length must be >= 0 seconds")
    if (args.data is None) == (args.features is None):
        raise UsageError("give exactly one of --data FILE.h5 and --features DIR" + (
            "" if args.data is None else f" (got --data {args.data} and --features {args.features})"))
    ensure_writable_file(args.out, "predictions, --out")  # before any model or data is loaded
    if args.features is not None:
        n_videos, n_segments = predict_features(
            args.ckpt, args.features, args.out, args.segments, args.threshold, args.merge_gap, args.min_length,
            args.batch_size, args.device, step_seconds_of(args), args.durations,
        )
    else:
        given = [f"--{n.replace('_', '-')}" for n in ("step_seconds", "fps", "stride", "durations")
                 if getattr(args, n) is not None]
        if given:
            raise UsageError(f"{given[0]} goes with --features DIR; a --data file has its own durations")
        subset = None if args.subset is None else (args.subset[0] if len(args.subset) == 1 else args.subset)
        n_videos, n_segments = predict(
            args.ckpt, args.data, args.out, subset, args.segments, args.threshold, args.merge_gap,
            args.min_length, args.batch_size, args.device,
        )
    print(f"wrote per-step scores of {n_videos} videos to {args.out}")
    if args.segments:
        print(f"wrote {n_segments} action segments to {args.segments}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_app("predict", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
