"""Event-level mAP, the PKU-MMD protocol (also used for TSU), DESIGN.md §5.

1. **Segments from per-step scores** (:func:`extract_segments`): per class, runs of steps
   with ``p ≥ threshold`` (step ``i`` covers ``[i·L/T, (i+1)·L/T)``), runs separated by a
   gap ``≤ merge_gap`` seconds merged, segments shorter than ``min_length`` seconds dropped;
   score = mean probability over the segment's steps.
2. **Matching**: ``IoU = (min_end − max_start) / (max_end − min_start)``. Per video and class,
   detections in descending score each take the unmatched ground truth with the highest
   IoU if it is ``≥ θ`` (distinct hits; ``unique_matches=False`` reproduces the official
   script, where a detection is a hit whenever its best IoU is ``≥ θ``, duplicates included).
3. **AP** per class. Default ``ap_variant="voc"``: all-point interpolated AP with
   ``p_j = j / r_j`` (the protocol as the project states it: interpolated AP over distinct
   hits). ``ap_variant="pku"`` reproduces the official ``evaluate.py`` exactly: with the hits at
   ranks ``r_1 < ... < r_K`` and ``G`` ground truths,

       AP = Σ_k max_{j ≥ k} p'_j · (min(k/G, 1) − min((k−1)/G, 1)),   p'_j = (j−1) / max(r_j − 1, 1)

   i.e. interpolated precision where each hit's precision is measured on the detections
   ranked strictly above it -- the official loop's behaviour: a class whose only hit is
   ranked first gets AP 0, and ``[hit, miss, hit]`` with G = 2 gets 0.5.
   ``"voc"`` gives 1.0 and 0.833 in those examples. Use ``"pku"`` to compare with numbers
   produced by the official script. Ties in score keep the official stable-sort order.

``map@θ`` averages over classes with at least one ground-truth segment; ``map_all@θ`` over
all ``C`` classes (AP 0 where there is no ground truth, as the official script does for
its empty slot 0 -- it divides by 52 for PKU-MMD's 51 1-based classes, i.e. it equals
``map_all · 51/52``). ``map`` is the mean of ``map@θ`` over ``thetas``.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from .common import cat_state, check_segments, check_video_batch, synced

Detection = tuple[int, float, float, float]  # (class, start_s, end_s, score)
APVariant = Literal["pku", "voc"]


def extract_segments(
    scores: Tensor | np.ndarray,
    duration: float,
    threshold: float = 0.5,
    merge_gap: float = 0.0,
    min_length: float = 0.0,
) -> list[Detection]:
    """``scores (T, C)`` probabilities of one video -> ``[(class, start_s, end_s, score)]`` sorted by class, start."""
    arr = scores.detach().cpu().double().numpy() if isinstance(scores, Tensor) else np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"extract_segments: 'scores' must be (T >= 1, C), got shape {arr.shape}")
    if not (np.isfinite(duration) and duration > 0):
        raise ValueError(f"extract_segments: 'duration' must be a positive number of seconds, got {duration}")
    steps, num_classes = arr.shape
    step = float(duration) / steps
    active = np.zeros((num_classes, steps + 2), dtype=np.int8)  # class-major: runs come out by class, start
    active[:, 1:-1] = (arr >= threshold).T
    edges = np.diff(active, axis=1)  # +1 at a run's first step, -1 one past its last step
    run_class, starts = np.nonzero(edges == 1)
    if not len(starts):
        return []
    ends = np.nonzero(edges == -1)[1]  # the same runs in the same order: each start has its end
    # Merge runs of one class whose gap (in seconds) is <= merge_gap (tolerance for float fuzz).
    new_group = np.ones(len(starts), dtype=bool)
    new_group[1:] = (run_class[1:] != run_class[:-1]) | ((starts[1:] - ends[:-1]) * step > merge_gap + 1e-9 * step)
    last = np.append(new_group[1:], True)
    cls, s, e = run_class[new_group], starts[new_group], ends[last]
    keep = (e - s) * step + 1e-9 * step >= min_length
    cls, s, e = cls[keep], s[keep], e[keep]
    cumsum = np.concatenate([np.zeros((1, num_classes)), np.cumsum(arr, axis=0)])
    score = (cumsum[e, cls] - cumsum[s, cls]) / (e - s)
    return list(zip(cls.tolist(), (s * step).tolist(), (e * step).tolist(), score.tolist()))


def _iou(start: np.ndarray, end: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU ``(n, m)`` of each ``[start_i, end_i]`` with each ``gt`` row ``[class, start, end]``
    (0 where the hull is empty)."""
    start, end = start[:, None], end[:, None]
    inter = np.minimum(end, gt[None, :, 2]) - np.maximum(start, gt[None, :, 1])
    hull = np.maximum(end, gt[None, :, 2]) - np.minimum(start, gt[None, :, 1])
    return np.where(hull > 0, inter / np.where(hull > 0, hull, 1.0), 0.0)


def descending(scores: np.ndarray) -> np.ndarray:
    """Ranking order: the official stable ascending sort by score, read from the top."""
    return np.argsort(scores, kind="stable")[::-1]


def match_video(dets: np.ndarray, gts: np.ndarray, thetas: Sequence[float], unique: bool = True) -> np.ndarray:
    """Hit flags ``(n_det, len(thetas))`` for one video's ``dets (n, 4)`` [class, start, end, score]
    against its ``gts (m, 3)`` [class, start, end] (module docstring, step 2)."""
    hits = np.zeros((len(dets), len(thetas)), dtype=bool)
    if not len(dets) or not len(gts):
        return hits
    for c in np.unique(dets[:, 0]):
        own_gt = gts[gts[:, 0] == c]
        if not len(own_gt):
            continue
        idx = np.flatnonzero(dets[:, 0] == c)
        idx = idx[descending(dets[idx, 3])]
        ious = _iou(dets[idx, 1], dets[idx, 2], own_gt)  # (n_c, m_c)
        for k, theta in enumerate(thetas):
            if not unique:
                hits[idx, k] = ious.max(1) >= theta
                continue
            taken = np.zeros(len(own_gt), dtype=bool)
            # only detections reaching theta with some ground truth can hit (the others skip)
            for row in np.flatnonzero((ious >= theta).any(1)).tolist():
                cand = np.where(taken | (ious[row] < theta), -np.inf, ious[row])
                j = int(np.argmax(cand))
                if np.isfinite(cand[j]):
                    taken[j] = True
                    hits[idx[row], k] = True
                    if taken.all():
                        break
    return hits


def class_ap(scores: np.ndarray, hits: np.ndarray, num_gt: int, variant: APVariant = "pku") -> float:
    """AP of one class from its detections' ``scores`` and ``hits`` (module docstring, step 3).

    NaN if ``num_gt == 0``.
    """
    if num_gt == 0:
        return float("nan")
    ranks = np.flatnonzero(hits[descending(scores)]) + 1
    if not len(ranks):
        return 0.0
    j = np.arange(1, len(ranks) + 1, dtype=np.float64)
    if variant == "pku":
        precision = (j - 1) / np.maximum(ranks - 1, 1)
    elif variant == "voc":
        precision = j / ranks
    else:
        raise ValueError(f"ap_variant must be 'pku' or 'voc', got {variant!r}")
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]
    recall = np.minimum(j / num_gt, 1.0)
    return float(np.sum(interpolated * np.diff(recall, prepend=0.0)))


def _check_thetas(thetas: Sequence[float]) -> tuple[float, ...]:
    thetas = tuple(float(t) for t in thetas)
    if not thetas or any(not 0.0 < t <= 1.0 for t in thetas):
        raise ValueError(f"event mAP: thetas must be a non-empty list in (0, 1], got {thetas}")
    return thetas


def _check_detections(where: str, dets: Sequence[Sequence[float]], num_classes: int) -> np.ndarray:
    arr = np.asarray(dets, dtype=np.float64).reshape(-1, 4) if len(dets) else np.zeros((0, 4))
    if arr.size and (
        not np.isfinite(arr).all()
        or (arr[:, 0] < 0).any()
        or (arr[:, 0] >= num_classes).any()
        or (arr[:, 2] < arr[:, 1]).any()
    ):
        raise ValueError(
            f"{where}: detections must be (class in [0, {num_classes}), start_s, end_s >= start_s, score), finite"
        )
    return arr


def _summarise(ap: dict[float, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for theta, values in ap.items():
        present = ~np.isnan(values)
        out[f"map@{theta:g}"] = float(values[present].mean()) if present.any() else float("nan")
        out[f"map_all@{theta:g}"] = float(np.nan_to_num(values, nan=0.0).mean())
    out["map"] = float(np.mean([out[f"map@{t:g}"] for t in ap]))
    out["ap"] = ap
    return out


def _ap_per_class(
    classes: np.ndarray,
    scores: np.ndarray,
    hits: np.ndarray,
    gt_count: np.ndarray,
    thetas: tuple[float, ...],
    variant: APVariant,
) -> dict[float, np.ndarray]:
    ap = {}
    for k, theta in enumerate(thetas):
        ap[theta] = np.array(
            [
                class_ap(scores[classes == c], hits[classes == c, k], int(gt_count[c]), variant)
                for c in range(len(gt_count))
            ]
        )
    return ap


def event_map(
    predictions: Mapping[str, Sequence[Detection]],
    ground_truth: Mapping[str, np.ndarray],
    thetas: Sequence[float] = (0.1, 0.3, 0.5),
    *,
    num_classes: int | None = None,
    unique_matches: bool = True,
    ap_variant: APVariant = "voc",
) -> dict[str, Any]:
    """Event-level mAP over videos (module docstring).

    ``predictions``: video id -> ``[(class, start_s, end_s, score)]`` (e.g. from
    :func:`extract_segments`); ``ground_truth``: video id -> ``(N, 3)`` ``[class, start_s, end_s]``
    (every evaluated video, also those without predictions). Returns ``map@θ``, ``map_all@θ``,
    ``map`` (floats) and ``ap`` (θ -> per-class array, NaN for classes without ground truth).
    """
    thetas = _check_thetas(thetas)
    missing = [v for v in predictions if v not in ground_truth]
    if missing:
        raise ValueError(f"event_map: videos {missing[:5]} have predictions but no ground truth")
    if num_classes is None:
        ids = [int(s[0]) for segs in ground_truth.values() for s in np.asarray(segs).reshape(-1, 3)]
        ids += [int(d[0]) for dets in predictions.values() for d in dets]
        num_classes = max(ids, default=-1) + 1
    gt_count = np.zeros(num_classes, dtype=np.int64)
    gts = {}
    for vid, segs in ground_truth.items():
        gts[vid] = check_segments(f"event_map: video {vid!r}", segs, num_classes)
        np.add.at(gt_count, gts[vid][:, 0].astype(np.int64), 1)
    classes, scores, hits = [np.zeros(0)], [np.zeros(0)], [np.zeros((0, len(thetas)), dtype=bool)]
    for vid, dets in predictions.items():
        arr = _check_detections(f"event_map: video {vid!r}", dets, num_classes)
        classes.append(arr[:, 0])
        scores.append(arr[:, 3])
        hits.append(match_video(arr, gts[vid], thetas, unique_matches))
    ap = _ap_per_class(
        np.concatenate(classes), np.concatenate(scores), np.concatenate(hits), gt_count, thetas, ap_variant
    )
    return _summarise(ap)


def checked_videos(
    where: str, probs: Tensor, mask: Tensor, num_classes: int, durations: Tensor | Sequence[float],
    segments: Sequence[np.ndarray], video_ids: Sequence[str] | None,
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """A batch's videos checked and converted (``EventMAP.update(..., checked=)``):
    ``[(scores over the valid steps (T_valid, C) float64, duration, ground truth (m, 3))]``.
    Errors name ``where``, the video and the field."""
    durations, video_ids = check_video_batch(where, probs, mask, num_classes, durations, segments, video_ids,
                                             default_id="#{}")
    probs_np = probs.detach().double().cpu().numpy()
    mask_np = mask.cpu().numpy()
    videos = []
    for b in range(probs.shape[0]):
        at = f"{where}: video {video_ids[b]!r}"
        valid = probs_np[b][:, mask_np[b]].T
        if not len(valid):
            raise ValueError(f"{at}: no valid step")
        videos.append((valid, durations[b], check_segments(at, segments[b], num_classes)))
    return videos


class EventMAP(Metric):
    """Event-level mAP (PKU-MMD protocol) as a torchmetrics metric, DDP-exact.

    Matching only involves one video's detections and ground truth, so each ``update``
    extracts segments and computes the hit flags of its videos; the states are the
    detections' class, score and hit flags plus per-class ground-truth counts.
    ``compute()`` returns ``{"event_map@θ": ..., "event_map": mean over θ}`` (scalars, for
    logging); :meth:`compute_details` returns the full :func:`event_map` dict.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        threshold: float = 0.5,
        merge_gap: float = 0.0,
        min_length: float = 0.0,
        thetas: Sequence[float] = (0.1, 0.3, 0.5),
        unique_matches: bool = True,
        ap_variant: APVariant = "voc",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if ap_variant not in ("pku", "voc"):
            raise ValueError(f"EventMAP: ap_variant must be 'pku' or 'voc', got {ap_variant!r}")
        self.num_classes = int(num_classes)
        self.threshold, self.merge_gap, self.min_length = float(threshold), float(merge_gap), float(min_length)
        self.thetas = _check_thetas(thetas)
        self.unique_matches = bool(unique_matches)
        self.ap_variant: APVariant = ap_variant
        self.add_state("det_class", default=[], dist_reduce_fx="cat")
        self.add_state("det_score", default=[], dist_reduce_fx="cat")
        self.add_state("det_hits", default=[], dist_reduce_fx="cat")  # flat (n * len(thetas),)
        self.add_state("gt_count", default=torch.zeros(self.num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        probs: Tensor,
        mask: Tensor,
        durations: Tensor | Sequence[float],
        segments: Sequence[np.ndarray],
        video_ids: Sequence[str] | None = None,
        *,
        checked: Sequence[tuple[np.ndarray, float, np.ndarray]] | None = None,
    ) -> None:
        """Add a batch. ``checked``: the same batch as :func:`checked_videos` returns it, to
        skip checking and converting it again (:class:`EventThresholdSearch` passes it to
        each of its cuts)."""
        videos = checked if checked is not None else checked_videos(
            "EventMAP.update", probs, mask, self.num_classes, durations, segments, video_ids)
        counts = np.zeros(self.num_classes, dtype=np.int64)
        rows, hits = [np.zeros((0, 4))], [np.zeros((0, len(self.thetas)), dtype=bool)]
        for valid, duration, gts in videos:
            np.add.at(counts, gts[:, 0].astype(np.int64), 1)
            dets = np.asarray(
                extract_segments(valid, duration, self.threshold, self.merge_gap, self.min_length), dtype=np.float64
            ).reshape(-1, 4)
            rows.append(dets)
            hits.append(match_video(dets, gts, self.thetas, self.unique_matches))
        dets_all, hits_all = np.concatenate(rows), np.concatenate(hits)
        device = self.gt_count.device
        self.det_class.append(torch.from_numpy(dets_all[:, 0].astype(np.int64)).to(device))
        self.det_score.append(torch.from_numpy(dets_all[:, 3].copy()).to(device))
        self.det_hits.append(torch.from_numpy(hits_all.astype(np.uint8).reshape(-1)).to(device))
        self.gt_count += torch.from_numpy(counts).to(device)

    def _details(self) -> dict[str, Any]:
        def cat(state: list[Tensor] | Tensor, dtype: Any) -> np.ndarray:
            return cat_state(state, self.device).cpu().numpy().astype(dtype)

        classes = cat(self.det_class, np.int64)
        scores = cat(self.det_score, np.float64)
        hits = cat(self.det_hits, bool).reshape(-1, len(self.thetas))
        ap = _ap_per_class(classes, scores, hits, self.gt_count.cpu().numpy(), self.thetas, self.ap_variant)
        return _summarise(ap)

    def compute(self) -> dict[str, Tensor]:
        details = self._details()
        out = {f"event_map@{t:g}": torch.tensor(details[f"map@{t:g}"], dtype=torch.float64) for t in self.thetas}
        out["event_map"] = torch.tensor(details["map"], dtype=torch.float64)
        return out

    def compute_details(self) -> dict[str, Any]:
        """The full :func:`event_map` result (``map@θ``, ``map_all@θ``, ``map``, per-class ``ap``)."""
        with synced(self):
            return self._details()


#: the candidate extraction thresholds ``event_threshold: auto`` chooses from: the protocol's
#: default 0.5 and the lower cuts that a less confident model needs (docs/metrics.md)
EVENT_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def choose_threshold(maps: Mapping[float, float], default: float = 0.5) -> float:
    """The extraction threshold with the highest event mAP in ``maps`` (``{threshold: map}``);
    among equal ones the closest to ``default`` (the protocol's 0.5), then the lower one, so
    a model with no segment at any cut (every mAP 0, e.g. before training) keeps the default.
    NaN counts as lowest."""
    if not maps:
        raise ValueError("choose_threshold: no candidate threshold")
    best = max((m if m == m else float("-inf")) for m in maps.values())
    ties = [t for t, m in maps.items() if (m if m == m else float("-inf")) == best]
    return min(ties, key=lambda t: (abs(t - default), t))


class EventThresholdSearch(torch.nn.Module):
    """:class:`EventMAP` at several extraction thresholds over the same predictions, to choose
    the threshold on validation videos (``event_threshold: auto`` of the detector modules).

    Each candidate is its own :class:`EventMAP` (DDP-exact like it), so ``compute()`` gives
    every rank the same ``(chosen threshold, its event mAP, {threshold: event mAP})``, the
    choice by :func:`choose_threshold`. Event mAP at one fixed cut ranks models partly by how
    confident they are (a model whose probabilities on positives are lower extracts fewer,
    shorter segments at 0.5); a cut chosen per model on validation compares their best
    segments, and the cut is then a property of the model, kept with its checkpoint.
    """

    def __init__(
        self,
        num_classes: int,
        thresholds: Sequence[float] = EVENT_THRESHOLDS,
        merge_gap: float = 0.0,
        min_length: float = 0.0,
        thetas: Sequence[float] = (0.1, 0.3, 0.5),
    ) -> None:
        super().__init__()
        values = [float(t) for t in thresholds]
        if not values or any(not 0.0 <= t <= 1.0 for t in values) or len(set(values)) != len(values):
            raise ValueError(f"EventThresholdSearch: thresholds must be distinct probabilities in [0, 1], got {values}")
        self.thresholds = sorted(values)
        self.metrics = torch.nn.ModuleList(
            EventMAP(num_classes, threshold=t, merge_gap=merge_gap, min_length=min_length, thetas=thetas)
            for t in self.thresholds
        )

    def update(self, probs: Tensor, mask: Tensor, durations: Tensor | Sequence[float],
               segments: Sequence[np.ndarray], video_ids: Sequence[str] | None = None) -> None:
        videos = checked_videos("EventThresholdSearch.update", probs, mask, self.metrics[0].num_classes,
                                durations, segments, video_ids)  # checked once for every cut
        for metric in self.metrics:
            metric.update(probs, mask, durations, segments, video_ids, checked=videos)

    def compute(self) -> tuple[float, float, dict[float, float]]:
        maps = {t: float(m.compute()["event_map"]) for t, m in zip(self.thresholds, self.metrics)}
        chosen = choose_threshold(maps)
        return chosen, maps[chosen], maps

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()
