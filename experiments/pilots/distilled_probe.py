"""Pilot (not a package feature): what can distillation pay a well-regularised linear student?

The distilled PDAN closes about 10 % of the teacher's lead on the labelled videos and about
a third with 432 videos nobody labelled. This pilot asks both questions without PDAN's
variance: the student is the ridge probe of ``kd_detect.lab.probe`` on RGB (±k steps, each
class's penalty chosen on validation), the teacher the same reader on every modality, so the
two differ only in what they see. Validation and test are always scored against true labels.

*Labelled videos only* (``FILE``). The student fits ``(1 - alpha) y + alpha s`` on the
training videos, ``s`` the teacher's scores there: in-sample (``insample``, what a distilled
detector gets: a teacher that has seen those labels) or cross-fitted (``crossfit``, each of
``--folds`` folds of the videos scored by a teacher fit on the others, at the full
teacher's penalties).

*A trained teacher* (``--pdan-teachers CKPT ...``, e.g. the RGB+flow+pose PDAN teachers of
``make compare``). Its probabilities take the place of the linear teacher's scores: on the
labelled videos (in sample, every alpha) and, with ``--extra``, on the unlabelled ones.

*The teacher's features* (``--directions``). The linear analogue of feature distillation
(FitNets, a hallucination branch): the RGB window is regressed on the teacher's inputs
(every modality, ±k steps; ridge, penalty ``N``), and the top ``r`` directions of that
fit, scaled by ``c``, are appended to the student's inputs, so a shared ridge penalty
shrinks the student less along them. The control takes the top ``r`` principal directions
of the RGB window itself (no teacher).

*Unlabelled videos* (``--extra CEILING_FILE``, the RGB ceiling's file: the same videos plus
432 more in ``training``; ``make data/synthetic_ceiling.h5``). The teacher is fit on the
labelled videos only; the student fits the labels on those and the teacher's scores on the
extra videos. Rows: the RGB-only teacher's scores instead (self-training, the control), and
the extra videos' own (noisy) labels (the RGB ceiling).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/distilled_probe.py data/synthetic.h5 \
        [--extra data/synthetic_ceiling.h5] [--directions] [--pdan-teachers CKPT ...] \
        [--context 2] [--alphas 0 0.25 0.5 0.75 1] [--folds 4]

Why it matters: if the teacher's scores do not lift a linear student, a distilled detector
can gain on the labelled videos only what it lacks in regularisation (at most the distance
to the probe), whatever its losses. Figures: docs/results.md, "What the teacher can give a
linear student".
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from kd_detect.data.format import FeatureFile
from kd_detect.lab.probe import DEFAULT_RATIOS, Split, choose_per_class, fit_ridge, frame_ap, probe_inputs

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


def pdan_scores(ckpt: str, path: str, names: list[str]) -> list[np.ndarray]:
    """A trained detector's probabilities ``(T, C)`` on the training videos ``names`` of ``path``."""
    from kd_detect.data.feature_data import FeatureData
    from kd_detect.modules.inference import iter_videos, load_for_inference

    predictor = load_for_inference(ckpt)
    dm = FeatureData(path, modalities=predictor.modalities, predict_subset="training", batch_size=8,
                     eval_batch_size=8, require_labels=False)
    try:
        probs = {vid: p.double().numpy() for vid, p, _, _ in iter_videos(predictor, dm.loader("predict"))}
    finally:
        dm.close()
    return [probs[n] for n in names]


def training_names(path: str) -> list[str]:
    ff = FeatureFile(path)
    names = list(ff.videos_in("training"))
    ff.close()
    return names


def pdan_teachers(path: str, extra: str | None, ckpts: list[str], context: int, alphas: list[float]) -> None:
    _, rgb = probe_inputs(path, ["rgb"], context, SUBSETS)
    x = np.concatenate(rgb["training"].features)
    y = np.concatenate(rgb["training"].labels)
    base = student(x, y, rgb)[1]
    names = training_names(path)
    print(f"trained teachers, their probabilities on the labelled videos (RGB student {base:.2f}):")
    gains: dict[float, list[float]] = {a: [] for a in alphas}
    for ckpt in ckpts:
        s = np.concatenate(pdan_scores(ckpt, path, names))
        row = []
        for alpha in alphas:
            test = student(x, (1 - alpha) * y + alpha * s, rgb)[1]
            gains[alpha].append(test - base)
            row.append(f"{alpha:g}: {test - base:+.2f}")
        print(f"  {ckpt}: mean |p - y| {np.abs(s - y).mean():.4f}; test - the student on labels, alpha " + ", ".join(row),
              flush=True)
    print("  mean over teachers: " + ", ".join(f"alpha {a:g} {np.mean(g):+.2f}" for a, g in gains.items()))
    if not extra:
        return
    labelled_names = set(names)
    all_names = training_names(extra)
    labelled = [i for i, n in enumerate(all_names) if n in labelled_names]
    others = [i for i, n in enumerate(all_names) if n not in labelled_names]
    _, rgb = probe_inputs(extra, ["rgb"], context, SUBSETS)
    tr = rgb["training"]
    x_all = np.concatenate([tr.features[i] for i in labelled] + [tr.features[i] for i in others])
    y_lab = np.concatenate([tr.labels[i] for i in labelled])
    base = student(np.concatenate([tr.features[i] for i in labelled]), y_lab, rgb)[1]
    print(f"  + {len(others)} unlabelled videos scored by each teacher (RGB student on the labelled ones {base:.2f}):")
    out = []
    for ckpt in ckpts:
        scores = pdan_scores(ckpt, extra, [all_names[i] for i in others])
        test = student(x_all, np.concatenate([y_lab] + scores), rgb)[1]
        out.append(test - base)
        print(f"    {ckpt}: test {test:.2f} ({test - base:+.2f})", flush=True)
    print(f"    mean over teachers {np.mean(out):+.2f}")


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


def with_extra(path: str, extra: str, context: int) -> None:
    ff = FeatureFile(path)
    labelled_names = set(ff.videos_in("training"))
    ff.close()
    ff = FeatureFile(extra)
    names = ff.videos_in("training")
    ff.close()
    labelled = [i for i, n in enumerate(names) if n in labelled_names]
    others = [i for i, n in enumerate(names) if n not in labelled_names]
    _, every = probe_inputs(extra, None, context, SUBSETS)
    _, rgb = probe_inputs(extra, ["rgb"], context, SUBSETS)
    tr = rgb["training"]
    x_lab = np.concatenate([tr.features[i] for i in labelled])
    y_lab = np.concatenate([tr.labels[i] for i in labelled])
    x_all = np.concatenate([x_lab] + [tr.features[i] for i in others])
    cross_modal, teacher_map = teacher_scores(every, labelled, others)
    self_scores, rgb_map = teacher_scores(rgb, labelled, others)
    print(f"{len(labelled)} labelled + {len(others)} unlabelled videos: teacher test {teacher_map:.2f}, "
          f"RGB student on the labelled videos {rgb_map:.2f}")
    from logistic_probe import fit_logistic  # this folder's pilot: BCE + lam ||W||^2 by L-BFGS

    def logistic_scores(splits: dict[str, Split]) -> list[np.ndarray]:
        t = splits["training"]
        w, b = (v.numpy() for v in fit_logistic(torch.as_tensor(np.concatenate([t.features[i] for i in labelled])),
                                                torch.as_tensor(y_lab), 0.1))
        return [1 / (1 + np.exp(-(t.features[i] @ w + b))) for i in others]

    rows = (
        ("the extra videos scored by the RGB+flow+pose teacher", cross_modal),
        ("the extra videos scored by the RGB teacher (control)", self_scores),
        ("... by the RGB+flow+pose logistic probe (lam 0.1), probabilities", logistic_scores(every)),
        ("... by the RGB logistic probe (lam 0.1), probabilities (control)", logistic_scores(rgb)),
        ("the extra videos with their labels (RGB ceiling)", [tr.labels[i] for i in others]),
    )
    for name, scores in rows:
        val, test = student(x_all, np.concatenate([y_lab] + scores), rgb)
        print(f"  {name}: validation {val:.2f}, test {test:.2f} ({test - rgb_map:+.2f}, "
              f"gap closed {100 * (test - rgb_map) / (teacher_map - rgb_map):.0f} %)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--extra", help="the same world with more training videos (the RGB ceiling's file)")
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
        pdan_teachers(args.file, args.extra, args.pdan_teachers, args.context, args.alphas)
    if args.extra:
        with_extra(args.file, args.extra, args.context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
