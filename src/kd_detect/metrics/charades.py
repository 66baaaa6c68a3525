"""Charades localisation mAP, the official protocol (``Charades_v1_localize.m``), DESIGN.md §5.

Per video of duration ``L`` with ``T`` valid steps, 25 frames ``j = 0..24`` at
``t_j = j·L/25`` are scored with step ``floor(j·T/25)``; frame ``j`` is positive for class
``c`` iff some segment of ``c`` has ``start ≤ t_j ≤ end`` (inclusive). All frames of all
videos are pooled and, per class,

    AP_c = (1/P_c) Σ_{positive frames i} precision@rank_c(i),      mAP = (1/C) Σ_c AP_c

over **all** classes, as the official script (``map = mean(ap_all)``). Edge cases vs the
official evaluation:
- a class with no positive frame has AP = 0/0 = NaN there, which makes the official mAP
  NaN; here its AP is reported NaN in ``ap`` but counted as 0 in ``map`` (and excluded in
  ``map_present``). On the real Charades test set every class has positives, so the
  three agree with the official value;
- ties: the official ``sort`` is stable, so tied scores are ranked in file order; here a
  tie group is counted at once (torchmetrics thresholds), which is order-free and hence
  identical under DDP. Equal on tie-free scores (ties arise when ``T < 25``);
- the official script also prints a class-size-weighted AP, returned here as ``wap``.
The submission file written by :func:`write_charades_submission` can be scored by the
official script for the exact published protocol.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from kd_detect.io import atomic_write

from .common import cat_state, check_segments, check_video_batch, decode_ids, encode_ids, per_class_ap, synced

FRAMES_PER_VIDEO = 25


def charades_frames(
    scores: Tensor | np.ndarray,
    duration: float,
    segments: np.ndarray | Tensor,
    num_classes: int,
    frames_per_video: int = FRAMES_PER_VIDEO,
    video_id: str | None = None,
) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray]:
    """``scores (T, C)`` of one whole video -> ``(frame_scores (25, C), frame_gt (25, C) uint8)``.

    ``frame_scores[j] = scores[floor(j·T/25)]``; ``frame_gt[j, c] = 1`` iff a segment of class
    ``c`` has ``start ≤ j·L/25 ≤ end``. Returns tensors for a tensor input, arrays otherwise.
    """
    where = f"charades_frames: video {video_id!r}" if video_id is not None else "charades_frames"
    as_numpy = not isinstance(scores, Tensor)
    scores_t = torch.as_tensor(scores)
    if scores_t.dim() != 2 or scores_t.shape[1] != num_classes or scores_t.shape[0] < 1:
        raise ValueError(f"{where}: 'scores' must be (T >= 1, C={num_classes}), got {tuple(scores_t.shape)}")
    if not (np.isfinite(duration) and duration > 0):
        raise ValueError(f"{where}: 'duration' must be a positive number of seconds, got {duration}")
    segs = check_segments(where, segments, num_classes)
    steps = scores_t.shape[0]
    idx = torch.div(torch.arange(frames_per_video) * steps, frames_per_video, rounding_mode="floor")
    frame_scores = scores_t[idx.to(scores_t.device)]
    times = np.arange(frames_per_video, dtype=np.float64) * (float(duration) / frames_per_video)
    gt = np.zeros((frames_per_video, num_classes), dtype=np.uint8)
    for cls, start, end in segs:
        gt[(start <= times) & (times <= end), int(cls)] = 1
    if as_numpy:
        return frame_scores.numpy(), gt
    return frame_scores, torch.from_numpy(gt).to(scores_t.device)


class CharadesMAP(Metric):
    """Official Charades localisation mAP over whole videos (module docstring), DDP-exact.

    ``update(probs (B, C, T), mask (B, T), durations (B,), segments [B × (N, 3)], video_ids)``;
    each video's valid steps must be the whole video. ``compute()`` returns the scalar mAP
    (all classes); :meth:`compute_details` also gives ``ap``, ``map_present`` and ``wap``;
    :meth:`frame_scores` gives ``(video_ids, (V, 25, C) array)`` for the submission file.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, frames_per_video: int = FRAMES_PER_VIDEO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or frames_per_video < 1:
            raise ValueError(
                f"CharadesMAP: num_classes and frames_per_video must be >= 1, got {num_classes}, {frames_per_video}"
            )
        self.num_classes = int(num_classes)
        self.frames_per_video = int(frames_per_video)
        self.add_state("frame_scores_", default=[], dist_reduce_fx="cat")  # flat (V*25*C,)
        self.add_state("frame_gt_", default=[], dist_reduce_fx="cat")  # flat (V*25*C,) uint8
        self.add_state("video_ids_", default=[], dist_reduce_fx="cat")  # flat (V*ID_BYTES,) uint8

    def update(  # type: ignore[override]
        self,
        probs: Tensor,
        mask: Tensor,
        durations: Tensor | Sequence[float],
        segments: Sequence[np.ndarray],
        video_ids: Sequence[str] | None = None,
    ) -> None:
        durations, video_ids = check_video_batch(
            "CharadesMAP.update", probs, mask, self.num_classes, durations, segments, video_ids,
            default_id=f"video{len(self.video_ids_)}_{{}}",
        )
        batch = probs.shape[0]
        scores, gts = [], []
        for b in range(batch):
            valid = probs[b].detach().transpose(0, 1)[mask[b]]
            if valid.shape[0] == 0:
                raise ValueError(f"CharadesMAP.update: video {video_ids[b]!r} has no valid step")
            fs, fg = charades_frames(
                valid.float(), durations[b], segments[b], self.num_classes, self.frames_per_video, video_ids[b]
            )
            scores.append(fs.reshape(-1))
            gts.append(fg.reshape(-1))
        self.frame_scores_.append(torch.cat(scores))
        self.frame_gt_.append(torch.cat(gts))
        self.video_ids_.append(encode_ids("CharadesMAP.update", video_ids, probs.device))

    def _frames(self) -> tuple[Tensor, Tensor]:
        scores = cat_state(self.frame_scores_, self.device).float().reshape(-1, self.num_classes)
        gt = cat_state(self.frame_gt_, self.device).to(torch.uint8).reshape(-1, self.num_classes)
        return scores, gt

    def _details(self) -> dict[str, Tensor]:
        scores, gt = self._frames()
        ap, positives = per_class_ap(scores, gt)
        present = positives > 0
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=ap.device)
        if not scores.shape[0]:
            return {"map": nan, "map_present": nan, "wap": nan, "ap": ap}
        ap0 = torch.nan_to_num(ap, nan=0.0)
        total = positives.sum()
        return {
            "map": ap0.mean(),
            "map_present": ap[present].mean() if present.any() else nan,
            "wap": (ap0 * positives).sum() / total if total > 0 else nan,
            "ap": ap,
        }

    def compute(self) -> Tensor:
        return self._details()["map"]

    def compute_details(self) -> dict[str, Tensor]:
        """``map`` (all classes, absent ones count 0), ``map_present``, ``wap``, per-class ``ap`` (NaN if absent)."""
        with synced(self):
            return {k: v.clone() for k, v in self._details().items()}

    def frame_scores(self) -> tuple[list[str], np.ndarray]:
        """All videos' ids and ``(V, 25, C)`` frame scores (gathered over ranks: call on every rank)."""
        with synced(self):
            scores, _ = self._frames()
            ids = decode_ids(cat_state(self.video_ids_, self.device))
            return ids, scores.reshape(-1, self.frames_per_video, self.num_classes).cpu().numpy()


def write_charades_submission(
    path: str | os.PathLike,
    video_ids: Sequence[str],
    frame_scores: np.ndarray | Tensor | Sequence[np.ndarray],
) -> Path:
    """Write the official localisation submission: one line ``id frameno s_0 ... s_{C-1}`` per
    frame, ``frameno`` 1..25, for each video (atomic: temp file + rename)."""
    path = Path(path)
    if isinstance(frame_scores, Tensor):
        frame_scores = frame_scores.detach().cpu().numpy()
    arrays = [np.asarray(s.detach().cpu() if isinstance(s, Tensor) else s, dtype=np.float64) for s in frame_scores]
    if len(arrays) != len(video_ids):
        raise ValueError(f"{path}: {len(video_ids)} video ids but {len(arrays)} frame-score arrays")
    num_classes = None
    for vid, arr in zip(video_ids, arrays):
        if not vid or any(ch.isspace() for ch in str(vid)):
            raise ValueError(f"{path}: video id {vid!r} must be non-empty without whitespace")
        same_c = num_classes is None or arr.shape[1:] == (num_classes,)
        if arr.ndim != 2 or arr.shape[0] != FRAMES_PER_VIDEO or not same_c:
            raise ValueError(
                f"{path}: video {vid!r}: frame scores must be ({FRAMES_PER_VIDEO}, C) with the same C for all videos, "
                f"got {arr.shape}"
            )
        num_classes = arr.shape[1]
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: video {vid!r}: frame scores contain non-finite values")
    line = "%s %d " + " ".join(["%.7g"] * (num_classes or 0)) + "\n"
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        for vid, arr in zip(video_ids, arrays):
            fh.writelines(line % (vid, j + 1, *row) for j, row in enumerate(arr.tolist()))
    return path
