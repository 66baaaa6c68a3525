"""A linear probe: how much of the labels a modality set gives a linear reader.

``python -m kd_detect.lab.probe FILE [--modalities rgb] [--context 2]`` fits one ridge
regression per class on the ``training`` subset, chooses each class's penalty on the
``validation`` subset and prints the per-frame mAP on ``testing`` -- computed by
:class:`kd_detect.metrics.FrameMAP`, so it is the same number the models report. It is a
floor for any trained detector on the same inputs, and a cheap ruler for a benchmark's
difficulty (how far apart RGB and RGB+flow+pose are).

Maths
-----
*Inputs.* Per step ``t`` of a video, ``f_t`` is the concatenation of the chosen
modalities' features, standardised with the training steps' per-dimension mean ``mu``
and std ``sigma`` (``sigma`` floored at 1e-6): ``z_t = (f_t - mu) / sigma``. With ``k``
steps of context the probe reads ``x_t = [z_{t-k}, ..., z_{t+k}]`` (``(2k + 1) D``
values), where steps outside the video are 0 (the training mean).

*Fit.* With ``X`` the ``(N, d)`` training rows, ``Y`` the ``(N, C)`` 0/1 labels and
their column means ``ybar``, each class ``c`` and penalty ``lambda`` give

    w_c(lambda) = (X^T X + lambda I)^{-1} X^T (Y_c - ybar_c),     s_t,c = x_t . w_c + ybar_c.

``X`` is not centred separately: its columns have mean 0 on the training steps already
(the context shift only zero-pads a few edge rows). One eigendecomposition
``X^T X = V diag(e) V^T`` serves every penalty: ``w(lambda) = V diag(1 / (e + lambda)) V^T X^T Y``.
Penalties are ``lambda = N * r`` for the grid ``r`` (default ``10^-4 ... 10^2``), so the grid
does not depend on the number of steps.

*Selection.* Class ``c`` keeps the penalty with the best average precision of
``s_.,c`` on the validation steps (a file without a ``validation`` subset: the 15 % of the
training videos a detector holds out for validation, by SHA-1 of the id); a class with no validation positive keeps the
penalty of best mean validation AP over the other classes.

*A teacher on unlabelled videos* (``--teacher CKPT``). The probe is then also a
well-regularised *student*: the teacher's probabilities ``p`` on the videos of
``--teacher-subset`` (default ``unlabelled``: videos with features only) join the training
rows as their targets, ``X = [X_lab; X_ext]``, ``Y = [Y_lab; P_ext]``. With them, ``X`` is
centred on its mean ``xbar`` over all rows (the extra videos move it), so the intercept is
``ybar - xbar . w_c``; the penalty grid scales with the rows, and selection and score are
as above. It measures what a teacher's outputs give a reader that has no variance to lose:
a sanity floor for a distilled student, as the plain probe is for RGB-only. (On the
labelled videos themselves a teacher gives a least-squares reader nothing: if the
student's inputs are among the teacher's, its fit to the teacher's in-sample fit is its fit
to the labels. docs/results.md, "What the teacher can give a linear student".)

*A share of the training videos* (``--training-share F``). The fit reads only
``ceil(F n)`` of the ``n`` training videos, those whose SHA-1 of the id ranks lowest (the
shares are nested: the videos of a smaller share are among those of a larger one);
validation and test are unchanged. Probing at ``F = 0.5`` and ``F = 1`` says what the second
half of the labelled videos gives a linear reader of RGB: a cheap bound on what more
videos, and so the teacher on videos without labels, can add (docs/results.md, "With four
times the labelled videos").

*Score.* AP is rank-based, so the test scores are passed to FrameMAP through the
monotone map ``sigmoid`` (it wants probabilities); the rank order, hence the AP, is the
ridge scores' own.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kd_detect.data.format import UNLABELLED, FeatureFile, FeatureFileError
from kd_detect.errors import KdDetectError, UsageError
from kd_detect.metrics import FrameMAP

DEFAULT_RATIOS = tuple(10.0**p for p in range(-4, 3))


def with_context(z: np.ndarray, k: int) -> np.ndarray:
    """``(T, D) -> (T, (2k+1) D)``: row ``t`` is ``[z_{t-k}, ..., z_{t+k}]``, zero outside."""
    if k < 0:
        raise ValueError(f"context must be >= 0, got {k}")
    num_steps, dim = z.shape
    out = np.zeros((num_steps, (2 * k + 1) * dim), dtype=z.dtype)
    for j, shift in enumerate(range(-k, k + 1)):
        lo, hi = max(0, -shift), min(num_steps, num_steps - shift)
        if hi > lo:
            out[lo:hi, j * dim : (j + 1) * dim] = z[lo + shift : hi + shift]
    return out


@dataclass
class Split:
    """The features ``(T, D)`` and labels ``(T, C)`` of each video of one subset."""

    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)


def load_split(ff: FeatureFile, subset: str, modalities: list[str], labels: bool = True,
               videos: list[str] | None = None) -> Split:
    """The videos of ``subset`` (or the list ``videos``): features, and labels unless
    ``labels`` is false (the list then stays empty)."""
    split = Split()
    for vid in ff.videos_in(subset) if videos is None else videos:
        data = ff.read(vid, modalities + (["labels"] if labels else []))
        split.features.append(np.concatenate([data[m].astype(np.float64) for m in modalities], axis=1))
        if labels:
            split.labels.append(data["labels"].astype(np.float64))
    return split


def frame_ap(videos_scores: list[np.ndarray], videos_labels: list[np.ndarray]) -> np.ndarray:
    """Per-class AP (NaN without a positive) of pooled per-step scores, through FrameMAP."""
    num_classes = videos_labels[0].shape[1]
    metric = FrameMAP(num_classes)
    for s, y in zip(videos_scores, videos_labels):
        probs = torch.sigmoid(torch.as_tensor(s, dtype=torch.float64)).float().T[None]
        metric.update(probs, torch.as_tensor(y, dtype=torch.float32).T[None], torch.ones(1, len(s), dtype=torch.bool))
    return metric.compute()["ap"].double().numpy()


@dataclass
class ProbeResult:
    modalities: list[str]
    context: int
    penalties: np.ndarray  # (C,) chosen lambda per class
    val_map: float
    test_map: float
    test_ap: np.ndarray  # (C,), NaN for classes without a test positive
    train_steps: int  # rows fit, the extra videos' included
    weights: np.ndarray  # (d, C): score = x_t . weights + intercept, x_t the standardised window
    intercept: np.ndarray  # (C,)
    extra_videos: int = 0
    held_out: int = 0  # training videos held out for validation (a file without a validation subset)


def fit_ridge(x: np.ndarray, y: np.ndarray, penalties: np.ndarray) -> np.ndarray:
    """Ridge weights ``(P, d, C)`` of centred ``y`` on ``x`` for each penalty (see module doc)."""
    gram = x.T @ x
    evals, evecs = np.linalg.eigh(gram)
    proj = evecs.T @ (x.T @ (y - y.mean(0)))  # (d, C)
    return np.stack([evecs @ (proj / (evals + lam)[:, None]) for lam in penalties])


def probe_inputs(
    path: str | Path,
    modalities: list[str] | None,
    context: int,
    subsets: tuple[str, ...],
    unlabelled: tuple[str, ...] = (),
    videos: dict[str, list[str]] | None = None,
) -> tuple[list[str], dict[str, Split]]:
    """The probe's inputs: per video of each of ``subsets`` (training first; ``videos`` may
    give a subset's video list instead of the file's), the rows ``x_t`` (standardised with
    the training steps' statistics, ``±context`` steps, see the module doc) and the labels
    (none for the subsets also named in ``unlabelled``). Returns the modalities used and
    ``{subset: Split}``."""
    ff = FeatureFile(path)
    modalities = list(modalities or ff.modalities)
    unknown = [m for m in modalities if m not in ff.modalities]
    if unknown:
        raise FeatureFileError(f"{ff.path}: modality {unknown[0]!r} not in the file (it has {ff.modalities})")
    splits = {}
    for name in subsets:
        splits[name] = load_split(ff, name, modalities, labels=name not in unlabelled, videos=(videos or {}).get(name))
        if not splits[name].features:
            raise FeatureFileError(f"{ff.path}: subset {name!r} holds no video (the probe needs it)")
    ff.close()
    train = np.concatenate(splits[subsets[0]].features)
    mu, sigma = train.mean(0), np.maximum(train.std(0), 1e-6)
    for split in splits.values():
        split.features = [with_context((f - mu) / sigma, context) for f in split.features]
    return modalities, splits


def choose_per_class(val_ap: np.ndarray) -> np.ndarray:
    """Index of the best candidate per class from validation APs ``(P, C)``; a class with no
    validation positive (a NaN column) takes the candidate of best mean AP over the others."""
    fallback = int(np.nanargmax(np.nanmean(val_ap, axis=1))) if not np.isnan(val_ap).all() else 0
    return np.array(
        [fallback if np.isnan(val_ap[:, c]).all() else int(np.nanargmax(val_ap[:, c])) for c in range(val_ap.shape[1])]
    )


def probe(
    path: str | Path,
    modalities: list[str] | None = None,
    context: int = 2,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    train_subset: str = "training",
    val_subset: str = "validation",
    test_subset: str = "testing",
    extra_subset: str | None = None,
    extra_targets: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
    training_share: float = 1.0,
) -> ProbeResult:
    """Fit, select and score the probe on ``path`` (see the module docstring).

    With ``extra_subset``, ``extra_targets(video_ids)`` gives the targets ``(T, C)`` of that
    subset's videos (a teacher's probabilities: :func:`teacher_targets`),
    which join the training rows. ``training_share`` < 1 fits on that share of the training
    videos only (by SHA-1 of the id, nested)."""
    if not 0.0 < training_share <= 1.0:
        raise UsageError(f"training_share must be in (0, 1], got {training_share}")
    subsets = (train_subset, val_subset, test_subset)
    videos, held_out = validation_videos(path, train_subset, val_subset)
    if training_share < 1.0:
        from kd_detect.data.feature_data import fixed_share

        if videos is None:
            ff = FeatureFile(path)
            videos = {train_subset: ff.videos_in(train_subset)}
            ff.close()
        videos = {**videos, train_subset: fixed_share(videos[train_subset], training_share)}
    if extra_subset is not None:
        if extra_subset in subsets:
            raise UsageError(f"the teacher's subset {extra_subset!r} is one the probe fits, chooses or scores on")
        if extra_targets is None:
            raise UsageError("extra_subset needs extra_targets (the teacher's probabilities)")
        subsets = (*subsets, extra_subset)
    modalities, splits = probe_inputs(path, modalities, context, subsets, unlabelled=subsets[3:], videos=videos)
    x = np.concatenate(splits[train_subset].features)
    y = np.concatenate(splits[train_subset].labels)
    xbar = np.zeros(x.shape[1])
    if extra_subset is not None:
        ff = FeatureFile(path)
        names = ff.videos_in(extra_subset)
        ff.close()
        targets = extra_targets(names)
        rows = splits[extra_subset].features
        for vid, f in zip(names, rows):
            t = targets.get(vid)
            if t is None or t.shape != (len(f), y.shape[1]):
                got = "nothing" if t is None else f"shape {tuple(t.shape)}"
                raise FeatureFileError(f"{path}: video {vid!r} (subset {extra_subset!r}): the teacher's targets must "
                                       f"have shape ({len(f)}, {y.shape[1]}) (steps, classes), got {got}")
            if not np.isfinite(t).all():
                raise FeatureFileError(f"{path}: video {vid!r} (subset {extra_subset!r}): the teacher's targets must "
                                       f"be finite (probabilities)")
        x = np.concatenate([x, *rows])
        y = np.concatenate([y, *(targets[v].astype(np.float64) for v in names)])
        xbar = x.mean(0)
        x = x - xbar
    ybar = y.mean(0)
    penalties = len(x) * np.asarray(ratios, dtype=np.float64)
    weights = fit_ridge(x, y, penalties)  # (P, d, C)

    def scores(rows: list[np.ndarray], w: np.ndarray) -> list[np.ndarray]:
        return [(r - xbar) @ w + ybar for r in rows]

    val_x, val_y = splits[val_subset].features, splits[val_subset].labels
    val_ap = np.stack([frame_ap(scores(val_x, w), val_y) for w in weights])  # (P, C)
    choice = choose_per_class(val_ap)
    chosen = weights[choice, :, np.arange(y.shape[1])].T  # (d, C)
    picked_val = val_ap[choice, np.arange(y.shape[1])]
    test_x, test_y = splits[test_subset].features, splits[test_subset].labels
    test_ap = frame_ap(scores(test_x, chosen), test_y)
    return ProbeResult(
        modalities=modalities,
        context=context,
        penalties=penalties[choice],
        val_map=float(np.nanmean(picked_val)),
        test_map=float(np.nanmean(test_ap)),
        test_ap=test_ap,
        train_steps=len(x),
        weights=chosen,
        intercept=ybar - xbar @ chosen,
        extra_videos=0 if extra_subset is None else len(splits[extra_subset].features),
        held_out=held_out,
    )


def validation_videos(path: str | Path, train_subset: str, val_subset: str) -> tuple[dict[str, list[str]] | None, int]:
    """Where the penalty is chosen, as the detectors choose checkpoints (``val_subset: auto``):
    the file's ``validation`` subset, else a fixed share of the training videos held out by
    SHA-1 of the id (``kd_detect.data.feature_data.fixed_share``, the same videos a detector
    validates on). Returns ``({subset: videos}`` overriding the file's lists, or ``None``, and
    how many training videos were held out)."""
    from kd_detect.data.feature_data import AUTO_SHARE, VALIDATION, fixed_share

    ff = FeatureFile(path)
    try:
        train = ff.videos_in(train_subset)
        if val_subset != VALIDATION or ff.videos_in(VALIDATION) or len(train) < 2:
            return None, 0
        held = set(fixed_share(train, AUTO_SHARE))
        return {train_subset: [v for v in train if v not in held], val_subset: [v for v in train if v in held]}, len(held)
    finally:
        ff.close()


def teacher_targets(ckpt: str | Path, path: str | Path) -> Callable[[list[str]], dict[str, np.ndarray]]:
    """``video_ids -> {video: probabilities (T, C)}`` of the detector checkpoint ``ckpt`` on
    those videos of ``path`` (it reads its own modalities; no labels needed)."""

    def run(video_ids: list[str]) -> dict[str, np.ndarray]:
        from kd_detect.data.feature_data import FeatureData
        from kd_detect.modules.inference import check_data, iter_videos, load_for_inference

        predictor = load_for_inference(ckpt)
        check_data(predictor, path)
        ff = FeatureFile(path)
        subsets = sorted({ff.subsets[v] for v in video_ids if v in ff.subsets})  # run the teacher on those only
        ff.close()
        dm = FeatureData(str(path), modalities=predictor.modalities, predict_subset=subsets or None, batch_size=8,
                         eval_batch_size=8, require_labels=False)
        try:
            if list(dm.classes) != predictor.classes:
                raise UsageError(f"{ckpt}: the teacher's classes {predictor.classes[:3]}... are not those of {path} "
                                 f"{list(dm.classes)[:3]}...")
            wanted = set(video_ids)
            return {vid: p.double().numpy() for vid, p, _, _ in iter_videos(predictor, dm.loader("predict"))
                    if vid in wanted}
        finally:
            dm.close()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd_detect.lab.probe",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("file", type=Path, help="feature file (format v1) with training/validation/testing subsets")
    parser.add_argument("--modalities", nargs="+", default=None,
                        help="modalities to concatenate (default: all of the file's)")
    parser.add_argument("--context", type=int, default=2, help="steps of context on each side (k in ±k)")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="detector checkpoint whose probabilities on --teacher-subset join the training rows")
    parser.add_argument("--teacher-subset", default=UNLABELLED, help="the videos the teacher scores")
    parser.add_argument("--training-share", type=float, default=1.0,
                        help="fit on this share of the training videos only (by SHA-1 of the id; 0.5 and 1 say what "
                             "the second half of the labelled videos gives)")
    args = parser.parse_args(argv)
    if args.context < 0:
        parser.error(f"--context must be >= 0, got {args.context}")
    if not 0.0 < args.training_share <= 1.0:
        parser.error(f"--training-share must be in (0, 1], got {args.training_share}")
    try:
        if args.teacher is None:
            result = probe(args.file, args.modalities, args.context, training_share=args.training_share)
        else:
            result = probe(args.file, args.modalities, args.context, extra_subset=args.teacher_subset,
                           extra_targets=teacher_targets(args.teacher, args.file), training_share=args.training_share)
    except (FeatureFileError, KdDetectError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    extra = f" on {args.training_share:g} of the training videos" if args.training_share < 1.0 else ""
    extra += f" + {result.extra_videos} {args.teacher_subset} videos scored by the teacher" if args.teacher else ""
    if result.held_out:
        extra += f"; no validation subset: {result.held_out} training videos held out by SHA-1 of the id"
    print(
        f"probe {'+'.join(result.modalities)} context ±{result.context}{extra}: validation frame mAP "
        f"{100 * result.val_map:.2f}, test frame mAP {100 * result.test_map:.2f} "
        f"({result.train_steps} training steps, penalty/N median {np.median(result.penalties) / result.train_steps:.0e})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
