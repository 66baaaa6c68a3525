"""Multi-label logit distillation (DESIGN.md §3, baselines).

``L = τ² · mean_{t valid, c} KL(Bern(σ(z^F_ct/τ)) || Bern(σ(z^S_ct/τ)))`` -- Hinton et al.'s
KD with a per-class binary (sigmoid) distribution, as befits multi-label detection.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_detect.distill._common import fp32_region, masked, zero_loss
from kd_detect.distill.base import DistillationLoss, Weight
from kd_detect.models.heads.base import HeadOutput


class LogitKD(DistillationLoss):
    """Logit KD for multi-label outputs (DESIGN.md §3).

    ``L = τ² · 1/(N·C) Σ_{t valid} Σ_c [p log(p/q) + (1−p) log((1−p)/(1−q))]`` with
    ``p = σ(z^F/τ)``, ``q = σ(z^S/τ)``, ``N`` the valid steps of the batch. Computed from
    logits as ``BCE(z^S/τ, p) − BCE(z^F/τ, p)`` (stable, exactly 0 when logits agree).

    Args:
        weight: loss weight.
        tau: temperature. Default 2.0: most classes are absent at most steps and the
            teacher pushes their logits far negative; at τ=1 those sigmoids are ≈0 and
            carry no signal, τ=2 softens them enough to expose the teacher's relative
            confidence on the negatives (the "dark knowledge") without flattening every
            probability towards 0.5. ``τ²`` keeps the gradient scale comparable across τ.
    """

    teacher_view = "logits"

    def __init__(self, weight: Weight = 1.0, tau: float = 2.0) -> None:
        super().__init__(weight)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.logits):
            zs = masked(student.logits, mask) / self.tau
            zt = masked(teacher.logits, mask) / self.tau
            n = mask.sum() * zs.shape[1]
            if n == 0:
                return zero_loss(zs)
            p = zt.sigmoid()
            kl = F.binary_cross_entropy_with_logits(zs, p, reduction="none") - F.binary_cross_entropy_with_logits(
                zt, p, reduction="none"
            )
            kl = kl * mask[:, None, :]
            return self.tau**2 * kl.sum() / n

    def extra_repr(self) -> str:
        return f"weight={self.weight_repr}, tau={self.tau}"
