"""Pilot (a measurement, not a package feature): what a trained model says on its own training videos.

A teacher distils only on the student's training videos, which are its own training videos
too. This prints, for each checkpoint, frame mAP (FrameMAP's per-class AP, averaged over the
classes present) of its eval-mode scores

* on the training subset against the file's (noisy) training labels,
* on the same videos against exact labels, from a second file with identical features and
  exact training labels (for the synthetic benchmark: ``python -m data_prep.synthetic --out
  data/synthetic_cleanlabels.h5 --label-drop 0 --label-jitter 0``),
* on the test subset,

and, with ``--cache``, the same for the logits of a teacher cache on the training videos
(e.g. a cross-fitted teacher's, ``kd-detect cache-teacher --ckpt F0 F1 F2 F3``)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/training_fit.py \
        runs/synthetic_teacher/best.ckpt runs/synthetic_rgb/best.ckpt \
        --data data/synthetic.h5 --exact data/synthetic_cleanlabels.h5 [--cache CACHE.h5]

A model close to 100 against the training labels and far lower on test has learnt those
labels: on those videos its outputs carry little that the labels do not. Measured figures:
docs/results.md.
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import torch

from kd_detect.data.feature_data import FeatureData
from kd_detect.data.format import FeatureFile
from kd_detect.metrics.common import per_class_ap
from kd_detect.modules.inference import iter_videos, load_for_inference


def frame_map(scores: np.ndarray, labels: np.ndarray) -> float:
    ap, _ = per_class_ap(torch.from_numpy(scores).float(), torch.from_numpy(labels > 0.5))
    return 100.0 * float(ap[~ap.isnan()].mean())


def labels_of(path: str, videos: list[str]) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return np.concatenate([h5["videos"][v]["labels"][()] for v in videos]).astype(np.float32)


def model_scores(ckpt: str, data: str, videos: list[str]) -> np.ndarray:
    """The model's eval-mode scores (T, C) of ``videos`` (all of one subset), concatenated in that order."""
    predictor = load_for_inference(ckpt)
    subsets = {FeatureFile(data).subsets[v] for v in videos}
    dm = FeatureData(data, modalities=predictor.modalities, predict_subset=subsets.pop(), batch_size=8,
                     eval_batch_size=8)
    with torch.no_grad():
        scores = {vid: probs.numpy() for vid, probs, _, _ in iter_videos(predictor, dm.loader("predict"))}
    return np.concatenate([scores[v] for v in videos])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="*", help="model checkpoints")
    parser.add_argument("--data", default="data/synthetic.h5")
    parser.add_argument("--exact", required=True, help="the same features with exact training labels")
    parser.add_argument("--cache", nargs="*", default=[], help="teacher caches: their logits on the training videos")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train = FeatureFile(args.data).videos_in("training")
    noisy, exact = labels_of(args.data, train), labels_of(args.exact, train)
    print(f"{'':60s} {'train vs noisy':>15s} {'train vs exact':>15s} {'test':>8s}")
    print(f"{'the noisy training labels themselves (0/1 scores)':60s} {100.0:15.2f} {frame_map(noisy, exact):15.2f}")
    test = FeatureFile(args.data).videos_in("testing")
    test_labels = labels_of(args.data, test)
    for ckpt in args.ckpts:
        scores = model_scores(ckpt, args.data, train)
        on_test = frame_map(model_scores(ckpt, args.data, test), test_labels)
        print(f"{ckpt:60s} {frame_map(scores, noisy):15.2f} {frame_map(scores, exact):15.2f} {on_test:8.2f}")
    for cache in args.cache:
        with h5py.File(cache, "r") as h5:
            logits = np.concatenate([h5["videos"][v]["logits"][()] for v in train])
        scores = 1.0 / (1.0 + np.exp(-logits))
        print(f"{cache + ' (cache)':60s} {frame_map(scores, noisy):15.2f} {frame_map(scores, exact):15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
