"""Pilot (not a package feature): what can distillation pay a well-regularised linear student?

The distilled PDAN closes about 10 % of the teacher's lead on the labelled videos and about
40 % with 432 videos nobody labelled. This pilot asks both questions without PDAN's
variance: the student is the ridge probe of ``kd_detect.lab.probe`` on RGB (±k steps, each
class's penalty chosen on validation); the teacher is the same reader on every modality (so
the two differ only in what they see) or a trained teacher. Validation and test are always
scored against the true labels.

*Labelled videos only* (``FILE``). The student fits ``(1 - alpha) y + alpha s`` on the
training videos, ``s`` the teacher's scores there: in sample (``insample``, what a distilled
detector gets: a teacher that has seen those labels) or cross-fitted (``crossfit``, each of
``--folds`` folds of the videos scored by a teacher fit on the others, at the full
teacher's penalties). With ``--pdan-teachers CKPT ...`` (e.g. the teachers of ``make
compare``), also each trained teacher's probabilities, in sample, at every alpha.

*The teacher's features* (``--directions``). The linear analogue of feature distillation
(FitNets, a hallucination branch): the RGB window is regressed on the teacher's inputs
(every modality, ±k steps; ridge, penalty ``N``), and the top ``r`` directions of that
fit, scaled by ``c``, are appended to the student's inputs, so a shared ridge penalty
shrinks the student less along them. The control takes the top ``r`` principal directions
of the RGB window itself (no teacher).

*Unlabelled videos* (``--unlabelled FILE_U``: ``FILE`` plus 432 videos without labels,
``make data/synthetic_unlabelled.h5``). The student is ``probe(..., extra_targets=...)``
(what ``probe --teacher`` runs): the labels on the labelled videos, a teacher's outputs on
the unlabelled ones. Teachers fit on the labelled videos: the ridge probe of every modality
(its scores) and of RGB (the control), the logistic probe (``logistic_probe.py``, lam 0.1:
probabilities) of each, and every ``--pdan-teachers`` checkpoint. ``--ceiling FILE_C`` adds
the probe of the same videos with their labels (``make data/synthetic_ceiling.h5``).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/distilled_probe.py data/synthetic.h5 \
        [--unlabelled data/synthetic_unlabelled.h5 --ceiling data/synthetic_ceiling.h5] [--directions] \
        [--pdan-teachers CKPT ...] [--context 2] [--alphas 0 0.25 0.5 0.75 1] [--folds 4]

Figures: docs/results.md, "What the teacher can give a linear student".
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from kd_detect.data.format import FeatureFile
from kd_detect.lab.probe import (
    DEFAULT_RATIOS,
    Split,
    choose_per_class,
    fit_ridge,
    frame_ap,
    probe,
    probe_inputs,
    teacher_targets,
)

SUBSETS = ("training", "validation", "testing")


def fit_chosen(x: np.ndarray, y: np.ndarray, val: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge of ``y`` on ``x``, each class's penalty chosen on ``val``: ``(W (d, C), ybar, val AP (C,), ratio index (C,))``."""
    ybar = y.mean(0)
    weights = fit_ridge(x, y, len(x) * np.asarray(DEFAULT_RATIOS))
    val_ap = np.stack([frame_ap([v @ w + ybar for v in val.features], val.labels) for w in weights])
    choice = choose_per_class(val_ap)
    classes = np.arange(y.shape[1])
    return weights[choice, :, classes].T, ybar, val_ap[choice, classes], choice


def student(x: np.ndarray, target: np.ndarray, splits: dict[str, Split]) -> tuple[float, float]:
    """Validation and test frame mAP (%) of the RGB student fit to ``target``."""
    w, ybar, val_ap, _ = fit_chosen(x, target, splits["validation"])
    test = splits["testing"]
    return 100 * float(np.nanmean(val_ap)), 100 * float(np.nanmean(frame_ap([t @ w + ybar for t in test.features], test.labels)))


def teacher_scores(splits: dict[str, Split], labelled: list[int], scored: list[int]) -> tuple[list[np.ndarray], float]:
    """Scores on the training videos ``scored`` of the probe fit on ``labelled``, and its test mAP (%)."""
    tr = splits["training"]
    w, ybar, _, _ = fit_chosen(np.concatenate([tr.features[i] for i in labelled]),
                               np.concatenate([tr.labels[i] for i in labelled]), splits["validation"])
    test = splits["testing"]
    test_map = 100 * float(np.nanmean(frame_ap([t @ w + ybar for t in test.features], test.labels)))
    return [tr.features[i] @ w + ybar for i in scored], test_map


def training_names(path: str) -> list[str]:
    ff = FeatureFile(path)
    names = list(ff.videos_in("training"))
    ff.close()
    return names


def pdan_teachers(path: str, ckpts: list[str], context: int, alphas: list[float]) -> None:
    _, rgb = probe_inputs(path, ["rgb"], context, SUBSETS)
    x = np.concatenate(rgb["training"].features)
    y = np.concatenate(rgb["training"].labels)
    base = student(x, y, rgb)[1]
    names = training_names(path)
    print(f"trained teachers, their probabilities on the labelled videos (RGB student {base:.2f}):")
    gains: dict[float, list[float]] = {a: [] for a in alphas}
    for ckpt in ckpts:
        probs = teacher_targets(ckpt, path)(names)
        s = np.concatenate([probs[n] for n in names])
        row = []
        for alpha in alphas:
            test = student(x, (1 - alpha) * y + alpha * s, rgb)[1]
            gains[alpha].append(test - base)
            row.append(f"{alpha:g}: {test - base:+.2f}")
        print(f"  {ckpt}: mean |p - y| {np.abs(s - y).mean():.4f}; test - the student on labels, alpha " + ", ".join(row),
              flush=True)
    print("  mean over teachers: " + ", ".join(f"alpha {a:g} {np.mean(g):+.2f}" for a, g in gains.items()))


def labelled_only(path: str, context: int, alphas: list[float], folds: int) -> None:
    _, every = probe_inputs(path, None, context, SUBSETS)
    _, rgb = probe_inputs(path, ["rgb"], context, SUBSETS)
    videos = list(range(len(every["training"].features)))
    y = np.concatenate(every["training"].labels)
    insample, teacher_map = teacher_scores(every, videos, videos)
    tr = every["training"]
    _, _, _, choice = fit_chosen(np.concatenate(tr.features), y, every["validation"])
    lam = np.asarray(DEFAULT_RATIOS)[choice]  # the full teacher's penalty ratios, per class
    cross: list[np.ndarray] = [np.empty(0)] * len(videos)
    for k in range(folds):
        inside = [i for i in videos if i % folds != k]
        xk = np.concatenate([tr.features[i] for i in inside])
        yk = np.concatenate([tr.labels[i] for i in inside])
        wk = np.stack([fit_ridge(xk, yk[:, [c]], np.array([lam[c] * len(xk)]))[0, :, 0] for c in range(y.shape[1])], 1)
        for i in videos[k::folds]:
            cross[i] = tr.features[i] @ wk + yk.mean(0)
    x = np.concatenate(rgb["training"].features)
    base = student(x, y, rgb)[1]
    print(f"labelled videos only: teacher (probe of every modality) test {teacher_map:.2f}, RGB student {base:.2f}")
    for kind, scores in (("insample", insample), ("crossfit", cross)):
        s = np.concatenate(scores)
        print(f"  teacher scores {kind}: mean |s - y| {np.abs(s - y).mean():.4f}")
        for alpha in alphas:
            val, test = student(x, (1 - alpha) * y + alpha * s, rgb)
            print(f"    alpha {alpha:g}: validation {val:.2f}, test {test:.2f} ({test - base:+.2f}, "
                  f"gap closed {100 * (test - base) / (teacher_map - base):.0f} %)", flush=True)


def feature_directions(path: str, context: int) -> None:
    _, every = probe_inputs(path, None, context, SUBSETS)
    _, rgb = probe_inputs(path, ["rgb"], context, SUBSETS)
    x = np.concatenate(rgb["training"].features)
    y = np.concatenate(rgb["training"].labels)
    base = student(x, y, rgb)[1]
    fit = fit_ridge(x, np.concatenate(every["training"].features), np.array([float(len(x))]))[0]
    teacher_dirs = fit @ np.linalg.svd(x @ fit, full_matrices=False)[2].T
    pca_dirs = np.linalg.svd(x, full_matrices=False)[2].T
    print(f"the teacher's directions in the RGB window (RGB student {base:.2f}):")
    for name, dirs in (("teacher's", teacher_dirs), ("principal (control)", pca_dirs)):
        for r in (10, 20, 40):
            for c in (1.0, 3.0):
                extra = c * dirs[:, :r]
                wide = {k: Split([np.concatenate([f, f @ extra], 1) for f in v.features], v.labels) for k, v in rgb.items()}
                val, test = student(np.concatenate(wide["training"].features), y, wide)
                print(f"  {name} r {r} c {c:g}: validation {val:.2f}, test {test:.2f} ({test - base:+.2f})", flush=True)


def with_unlabelled(path: str, unlabelled: str, ceiling: str | None, ckpts: list[str], context: int) -> None:
    """The RGB probe of ``unlabelled`` (the labelled file plus subset ``unlabelled``) taught
    each teacher's scores on those videos (``probe(..., extra_targets=...)``, the package's own
    ``probe --teacher``), the probe on the labelled videos alone, and the RGB ceiling's probe."""
    from logistic_probe import fit_logistic  # this folder's pilot: BCE + lam ||W||^2 by L-BFGS

    subsets = (*SUBSETS, "unlabelled")
    _, every = probe_inputs(unlabelled, None, context, subsets, unlabelled=("unlabelled",))
    _, rgb = probe_inputs(unlabelled, ["rgb"], context, subsets, unlabelled=("unlabelled",))
    ff = FeatureFile(unlabelled)
    names = ff.videos_in("unlabelled")
    ff.close()
    plain = probe(unlabelled, ["rgb"], context).test_map * 100
    videos = list(range(len(rgb["training"].features)))

    def ridge(splits: dict[str, Split]) -> dict[str, np.ndarray]:
        tr = splits["training"]
        w, ybar, _, _ = fit_chosen(np.concatenate(tr.features), np.concatenate(tr.labels), splits["validation"])
        return {n: f @ w + ybar for n, f in zip(names, splits["unlabelled"].features)}

    def logistic(splits: dict[str, Split]) -> dict[str, np.ndarray]:
        tr = splits["training"]
        w, b = (v.numpy() for v in fit_logistic(torch.as_tensor(np.concatenate(tr.features)),
                                                torch.as_tensor(np.concatenate(tr.labels)), 0.1))
        return {n: 1 / (1 + np.exp(-(f @ w + b))) for n, f in zip(names, splits["unlabelled"].features)}

    _, teacher_map = teacher_scores(every, videos, videos)
    print(f"{len(videos)} labelled + {len(names)} unlabelled videos: RGB probe {plain:.2f}, "
          f"the probe of every modality {teacher_map:.2f}")
    rows = [
        ("ridge probe of every modality (scores)", ridge(every)),
        ("ridge probe of RGB (scores; control)", ridge(rgb)),
        ("logistic probe of every modality, lam 0.1 (probabilities)", logistic(every)),
        ("logistic probe of RGB, lam 0.1 (probabilities; control)", logistic(rgb)),
    ]
    for name, targets in rows:
        r = probe(unlabelled, ["rgb"], context, extra_subset="unlabelled", extra_targets=lambda ids, t=targets: t)
        print(f"  taught by the {name}: validation {100 * r.val_map:.2f}, test {100 * r.test_map:.2f} "
              f"({100 * r.test_map - plain:+.2f})", flush=True)
    gains = []
    for ckpt in ckpts:
        r = probe(unlabelled, ["rgb"], context, extra_subset="unlabelled", extra_targets=teacher_targets(ckpt, unlabelled))
        gains.append(100 * r.test_map - plain)
        print(f"  taught by {ckpt}: validation {100 * r.val_map:.2f}, test {100 * r.test_map:.2f} ({gains[-1]:+.2f})",
              flush=True)
    if gains:
        print(f"  mean over the {len(gains)} trained teachers: {np.mean(gains):+.2f}")
    if ceiling:
        r = probe(ceiling, ["rgb"], context)
        print(f"  the RGB ceiling (the same videos with their labels): test {100 * r.test_map:.2f} "
              f"({100 * r.test_map - plain:+.2f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--unlabelled", help="the same file plus 432 videos in subset 'unlabelled' "
                        "(make data/synthetic_unlabelled.h5)")
    parser.add_argument("--ceiling", help="the same videos with their labels (make data/synthetic_ceiling.h5)")
    parser.add_argument("--directions", action="store_true", help="also the teacher's directions (FitNets' analogue)")
    parser.add_argument("--pdan-teachers", nargs="+", default=[], help="trained teacher checkpoints")
    parser.add_argument("--context", type=int, default=2)
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args(argv)
    labelled_only(args.file, args.context, args.alphas, args.folds)
    if args.directions:
        feature_directions(args.file, args.context)
    if args.pdan_teachers:
        pdan_teachers(args.file, args.pdan_teachers, args.context, args.alphas)
    if args.unlabelled:
        with_unlabelled(args.file, args.unlabelled, args.ceiling, args.pdan_teachers, args.context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
