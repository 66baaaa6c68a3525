"""Per-frame mAP, the papers' headline number (DESIGN.md §5).

The sigmoid scores of all valid steps of all evaluated videos are pooled; per class

    AP_c = (1 / P_c) · Σ_{i positive for c} precision@rank_c(i)      (no interpolation)

where ``rank_c`` sorts the pooled steps by descending score. Equal to the classic
``APMeter`` of the Charades/Super-event/PDAN code on tie-free scores (on ties the whole
tie group is counted at once; APMeter's value would depend on the sort order).

``compute()`` returns
- ``map``: mean AP over classes with at least one positive step -- the PDAN/TSU
  convention (TSU cross-view test has 18 of its 51 classes absent; they are excluded);
- ``map_all``: mean over all ``C`` classes with AP = 0 for classes without positives
  (what APMeter's ``.mean()`` gives);
- ``ap``: per-class AP, NaN for classes without positives.

Memory: only valid steps are stored, ``C`` float32 scores + ``C`` uint8 labels per step
(5·C bytes per step). Charades test (1,863 videos, ~1.7·10^5 I3D steps at 3 steps/s,
C = 157) is ~135 MB on the metric's device, plus a transient class-major copy of the same
size in ``compute``, which sorts one class at a time (~5 s for Charades on one CPU thread).
Exact under DDP: the states are ``cat`` lists that torchmetrics all-gathers, so each step
is counted once provided the sampler does not duplicate videos (the DataModule's job).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from .common import cat_state, check_probs_mask, per_class_ap


class FrameMAP(Metric):
    """Pooled per-frame mAP over valid steps (DESIGN.md §5); see the module docstring."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"FrameMAP: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        # Flattened (steps * C,) chunks; see metrics.common for why states are 1-D.
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor, mask: Tensor) -> None:  # type: ignore[override]
        """Add a batch: ``probs``/``labels (B, C, T)``, ``mask (B, T)`` bool (True = valid)."""
        check_probs_mask("FrameMAP.update", probs, mask, self.num_classes)
        if labels.shape != probs.shape:
            raise ValueError(
                f"FrameMAP.update: 'labels' must have the shape of probs {tuple(probs.shape)}, got {tuple(labels.shape)}"
            )
        valid_labels = labels.transpose(1, 2)[mask]
        if not ((valid_labels == 0) | (valid_labels == 1)).all():
            raise ValueError("FrameMAP.update: 'labels' must be binary (0/1) on valid steps")
        self.scores.append(probs.detach().transpose(1, 2)[mask].float().reshape(-1))
        self.targets.append(valid_labels.detach().to(torch.uint8).reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        scores = cat_state(self.scores, self.device).float().reshape(-1, self.num_classes)
        targets = cat_state(self.targets, self.device).to(torch.uint8).reshape(-1, self.num_classes)
        ap, _ = per_class_ap(scores, targets)
        present = ~torch.isnan(ap)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=ap.device)
        return {
            "map": ap[present].mean() if present.any() else nan,
            "map_all": torch.nan_to_num(ap, nan=0.0).mean() if scores.shape[0] else nan,
            "ap": ap,
        }
