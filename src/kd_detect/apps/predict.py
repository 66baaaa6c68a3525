"""``kd-detect predict --ckpt CKPT --data FILE.h5 --out preds.h5``: per-step probabilities (DESIGN.md §7).

The model is anything :func:`kd_detect.modules.inference.load_for_inference` loads: a
kd_detect checkpoint (a student without its teachers) or an exported RGB-only model
(TorchScript ``student.pt`` or ``student.state.pt``).

The feature file needs only the modalities the model reads (``rgb`` for a student) and no
labels. The output is an HDF5 prediction file, written atomically
(:func:`kd_detect.io.atomic_write`; never over ``--data`` or ``--ckpt``)::

    /                    attrs: classes = [str, ...]   (the model's class names)
    /videos/<id>/scores  float32 (T, C) probabilities over the video's valid steps
                         (group attrs: duration in seconds)

With ``--segments FILE.jsonl``, action segments extracted by
:func:`kd_detect.metrics.extract_segments` (threshold, merge gap, minimum length) are written
one JSON object per line: ``{"video", "class" (name), "start", "end", "score"}`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterator

import numpy as np

from kd_detect.apps import main as run_app
from kd_detect.errors import UsageError
from kd_detect.io import atomic_write, refuse_inputs

DESCRIPTION = (
    "Per-step action probabilities of every video of a feature file, from a kd_detect "
    "checkpoint or an exported RGB-only model; optional action segments as JSON lines."
)


def iter_scores(
    predictor: Any, loader: Any, durations: dict[str, float] | None = None
) -> Iterator[tuple[str, float, np.ndarray]]:
    """``(video_id, duration, scores (T, C) float32)`` per video of ``loader``'s batches;
    ``durations`` (the file's float64 values) override the batch's float32 ones."""
    from kd_detect.modules.inference import iter_videos

    durations = durations or {}
    for vid, probs, _, meta in iter_videos(predictor, loader):
        yield vid, float(durations.get(vid, meta["duration"])), probs.numpy().astype(np.float32)


def write_predictions(
    predictor: Any,
    loader: Any,
    out: str | os.PathLike,
    segments_out: str | os.PathLike | None = None,
    threshold: float = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
    attrs: dict[str, Any] | None = None,
    durations: dict[str, float] | None = None,
    inputs: tuple[str | os.PathLike, ...] = (),
) -> tuple[int, int]:
    """Run ``predictor`` over ``loader`` and write the prediction file (and segments, times
    rounded to the microsecond). Both files are written atomically and never over one of
    ``inputs``. Returns ``(videos, segments)`` counts."""
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
            for vid, duration, scores in iter_scores(predictor, loader, durations):
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
    threshold: float = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[int, int]:
    """Predict every video of ``subset`` (all with ``None``) of ``data``; see module docstring."""
    from kd_detect.data.datamodule import FeatureDataModule
    from kd_detect.modules.inference import check_data, load_for_inference

    for target in (out, segments):
        if target is not None:
            refuse_inputs(target, (data, ckpt))
    predictor = load_for_inference(ckpt, device)
    check_data(predictor, data)
    dm = FeatureDataModule(
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
    dm.setup("predict")
    try:
        return write_predictions(
            predictor, dm.predict_dataloader(), out, segments, threshold, merge_gap, min_length,
            attrs={"source_checkpoint": str(ckpt), "source_data": str(data)},
            durations=dm.feature_file.durations, inputs=(data, ckpt),
        )
    finally:
        dm.teardown("predict")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="kd_detect .ckpt, exported TorchScript .pt or .state.pt")
    parser.add_argument("--data", required=True, help="feature file (HDF5, format v1); labels not needed")
    parser.add_argument("--subset", nargs="+", default=None, help="subset(s) to predict (default: every video)")
    parser.add_argument("--out", required=True, help="prediction file to write (HDF5)")
    parser.add_argument("--segments", default=None, help="also write action segments to this .jsonl file")
    parser.add_argument("--threshold", type=float, default=0.5, help="segments: probability threshold")
    parser.add_argument("--merge-gap", type=float, default=0.0, help="segments: merge runs this close (seconds)")
    parser.add_argument("--min-length", type=float, default=0.0, help="segments: drop shorter ones (seconds)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be a probability in [0, 1], got {args.threshold}")
    if args.merge_gap < 0 or args.min_length < 0:
        raise UsageError("--merge-gap and --min-length must be >= 0 seconds")
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
