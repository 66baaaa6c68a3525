"""Helpers shared by the metrics: input checks, per-class AP via torchmetrics, id packing.

Metric states are kept **1-D** (flattened, reshaped in ``compute``): torchmetrics fills the
state of a rank that saw no data with a 1-D empty tensor before the all-gather, which
would not match 2-D states of the other ranks.
"""

from __future__ import annotations

from typing import ContextManager, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_average_precision
from torchmetrics.utilities.data import dim_zero_cat

ID_BYTES = 128  # fixed width of a packed video id (UTF-8, zero padded)


def synced(metric: Metric) -> ContextManager[None]:
    """States gathered over ranks (as inside ``compute``), for metric methods other than ``compute``."""
    return metric.sync_context(
        dist_sync_fn=metric.dist_sync_fn, should_sync=metric._to_sync, should_unsync=metric._should_unsync
    )


def cat_state(state: list[Tensor] | Tensor, device: torch.device) -> Tensor:
    """A ``cat`` state as one 1-D tensor: a list before sync (maybe empty), a tensor after."""
    if isinstance(state, Tensor):
        return state.reshape(-1)
    return dim_zero_cat(state).reshape(-1) if state else torch.zeros(0, device=device)


def check_video_batch(
    where: str,
    probs: Tensor,
    mask: Tensor,
    num_classes: int,
    durations: Tensor | Sequence[float],
    segments: Sequence[np.ndarray],
    video_ids: Sequence[str] | None,
    default_id: str,
) -> tuple[list[float], list[str]]:
    """The shared input check of the per-video metrics' ``update``: probs/mask as in
    :func:`check_probs_mask`, one duration, segments array and id per video. Returns the
    durations and ids as lists (missing ids become ``default_id.format(i)``)."""
    check_probs_mask(where, probs, mask, num_classes)
    batch = probs.shape[0]
    durations = as_list(durations)
    ids = list(video_ids) if video_ids is not None else [default_id.format(i) for i in range(batch)]
    if not (len(durations) == len(segments) == len(ids) == batch):
        raise ValueError(
            f"{where}: need one duration, segments array and video id per video (B={batch}), got "
            f"{len(durations)}, {len(segments)}, {len(ids)}"
        )
    return durations, ids


def check_probs_mask(where: str, probs: Tensor, mask: Tensor, num_classes: int) -> None:
    """Validate ``probs (B, C, T)`` in [0, 1] and ``mask (B, T)`` bool; errors name ``where`` and the field."""
    if probs.dim() != 3 or probs.shape[1] != num_classes:
        raise ValueError(f"{where}: 'probs' must have shape (B, C={num_classes}, T), got {tuple(probs.shape)}")
    if mask.shape != (probs.shape[0], probs.shape[2]) or mask.dtype != torch.bool:
        raise ValueError(
            f"{where}: 'mask' must be a bool tensor of shape (B, T) = {(probs.shape[0], probs.shape[2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    valid = probs.transpose(1, 2)[mask]
    if valid.numel() and not (torch.isfinite(valid).all() and valid.min() >= 0 and valid.max() <= 1):
        raise ValueError(
            f"{where}: 'probs' must be probabilities in [0, 1] on valid steps (apply sigmoid to logits); "
            f"got range [{valid.min().item():.4g}, {valid.max().item():.4g}]"
        )


def per_class_ap(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class AP of ``scores (N, C)`` against binary ``targets (N, C)`` and positive counts.

    AP_c = (1/P_c) Σ_{positives i} precision@rank(i) (no interpolation; on tied scores the
    whole tie group is taken at once, torchmetrics' threshold semantics). Classes without
    positives get NaN. Returns ``(ap (C,) float64, positives (C,) int64)``.
    """
    num_classes = scores.shape[1]
    positives = targets.sum(0, dtype=torch.int64)
    ap = torch.full((num_classes,), float("nan"), dtype=torch.float64, device=scores.device)
    if scores.shape[0] == 0:
        return ap, positives
    # One contiguous row per class: torchmetrics' binary AP on rows is ~2x faster than its
    # multilabel version, which sorts strided columns.
    scores_t = scores.float().t().contiguous()
    targets_t = targets.t().contiguous()
    for c in torch.nonzero(positives > 0).flatten().tolist():
        ap[c] = binary_average_precision(scores_t[c], targets_t[c].long(), validate_args=False).double()
    return ap, positives


def encode_ids(where: str, video_ids: Sequence[str], device: torch.device | None = None) -> Tensor:
    """Pack ids into a flat uint8 tensor of ``len(ids) * ID_BYTES`` (DDP-gatherable)."""
    out = np.zeros((len(video_ids), ID_BYTES), dtype=np.uint8)
    for i, vid in enumerate(video_ids):
        raw = str(vid).encode("utf-8")
        if not raw or len(raw) > ID_BYTES or b"\x00" in raw:
            raise ValueError(f"{where}: video id {vid!r} must be 1..{ID_BYTES} UTF-8 bytes without NUL")
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return torch.from_numpy(out.reshape(-1)).to(device)


def decode_ids(packed: Tensor) -> list[str]:
    """Inverse of :func:`encode_ids`."""
    rows = packed.to(torch.uint8).reshape(-1, ID_BYTES).cpu().numpy()
    return [bytes(row).rstrip(b"\x00").decode("utf-8") for row in rows]


def as_list(values: Tensor | Sequence[float] | np.ndarray) -> list[float]:
    """Durations from a tensor/array/sequence as Python floats."""
    if isinstance(values, Tensor):
        return [float(v) for v in values.detach().cpu().reshape(-1)]
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def check_segments(where: str, segments: np.ndarray | Tensor, num_classes: int) -> np.ndarray:
    """``segments`` as float64 ``(N, 3)`` ``[class, start_s, end_s]`` with class ids in range."""
    if isinstance(segments, Tensor):
        segments = segments.detach().cpu().numpy()
    arr = np.asarray(segments, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{where}: field 'segments' must be (N, 3) [class, start_s, end_s], got shape {arr.shape}")
    cls = arr[:, 0]
    if not np.isfinite(arr).all() or (cls < 0).any() or (cls >= num_classes).any() or (cls != np.round(cls)).any():
        raise ValueError(f"{where}: field 'segments' has non-finite values or class ids outside [0, {num_classes})")
    return arr
