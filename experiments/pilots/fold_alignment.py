"""Pilot (a measurement, not a package feature): do two models' features share one basis?

A cross-fitted teacher gives each video the features of one of several fold teachers, and
a loss that reads feature coordinates (``teacher_view == "space"``) needs them to agree.
For each pair of checkpoints this prints, over every valid step of the test videos,

* the mean cosine between the two models' features at the same step (one basis: high);
* linear CKA (Kornblith et al. 2019), which ignores the basis (the same content: high).

Fold teachers of one seed score high on both; models of different seeds high on CKA only::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/fold_alignment.py --data data/synthetic.h5 \\
        runs/folds/synthetic_teacher_fold0/best.ckpt runs/folds/synthetic_teacher_fold1/best.ckpt \\
        runs/synthetic_teacher/best.ckpt

Measured figures: docs/method.md, cross-fitting.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from kd_detect.data.feature_data import FeatureData
from kd_detect.modules.inference import iter_videos, load_for_inference


def step_features(ckpt: str, data: str, subset: str) -> torch.Tensor:
    """``(N, F)`` float64: the model's features at every valid step of ``subset``, videos in id order."""
    predictor = load_for_inference(ckpt)
    dm = FeatureData(data, modalities=predictor.modalities, predict_subset=subset, batch_size=8, eval_batch_size=8)
    with torch.no_grad():
        feats = {vid: f for vid, _, f, _ in iter_videos(predictor, dm.loader("predict"))}
    if any(f is None for f in feats.values()):
        raise SystemExit(f"{ckpt}: this checkpoint gives no features (an exported model?)")
    return torch.cat([feats[v] for v in sorted(feats)], 1).T.double()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x.T @ y).square().sum() / ((x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+", help="two or more model checkpoints with the same feature dim")
    parser.add_argument("--data", default="data/synthetic.h5")
    parser.add_argument("--subset", default="testing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    feats = {c: step_features(c, args.data, args.subset) for c in args.ckpts}
    for a, b in itertools.combinations(args.ckpts, 2):
        cos = float(F.cosine_similarity(feats[a], feats[b], dim=1).mean())
        print(f"{a}  {b}  same-step cosine {cos:+.3f}  linear CKA {linear_cka(feats[a], feats[b]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
