"""Feature-matching baselines (DESIGN.md §3): FitNets, MARS-style feature MSE and
attention transfer, all over valid steps only."""

from __future__ import annotations

from torch import Tensor, nn

from kd_detect.distill._common import fp32_region, l2n, masked, zero_loss
from kd_detect.distill.base import DistillationLoss
from kd_detect.models.heads.base import HeadOutput


def masked_mse(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``1/(N·F) Σ_{t valid} ‖x_t − y_t‖²`` for ``x, y (B, F, T)`` that are 0 on padding."""
    n = mask.sum() * x.shape[1]
    if n == 0:
        return zero_loss(x)
    return (x - y).square().sum() / n


class FitNets(DistillationLoss):
    """FitNets hint loss (Romero et al. 2015; DESIGN.md §3).

    ``L = 1/(N·F_t) Σ_{t valid} ‖r(S)_t − F_t‖²`` with a learned 1×1 conv regressor
    ``r: F_s→F_t`` on the student features (trained jointly, not in a separate stage).
    """

    def build(self, student_dim: int, teacher_dim: int, num_classes: int) -> None:
        self.regressor = nn.Conv1d(student_dim, teacher_dim, kernel_size=1)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            s = masked(student.features, mask)
            r = masked(self.regressor(s), mask)  # the bias would make padding non-zero
            return masked_mse(r, masked(teacher.features, mask), mask)


class FeatureMSE(DistillationLoss):
    """MARS-style feature regression (Crasto et al. 2019; DESIGN.md §3).

    ``L = 1/(N·F_t) Σ_{t valid} ‖P(S)_t − F_t‖²`` -- MARS matches features of equal size
    directly (``P`` = identity, nothing learnable). When ``F_s ≠ F_t`` a learned linear
    map ``P: F_s→F_t`` (1×1 conv, no bias) is inserted, which makes it FitNets-like.
    """

    def build(self, student_dim: int, teacher_dim: int, num_classes: int) -> None:
        self.proj: nn.Module = (
            nn.Identity() if student_dim == teacher_dim else nn.Conv1d(student_dim, teacher_dim, 1, bias=False)
        )

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            s = self.proj(masked(student.features, mask))
            return masked_mse(s, masked(teacher.features, mask), mask)


def attention_profile(x: Tensor) -> Tensor:
    """Temporal attention ``a_t = mean_c x_{c,t}²``, L2-normalised over time: ``(B, F, T) -> (B, T)``
    (padding must be 0 in ``x``, so it is 0 in ``a`` and excluded from the norm)."""
    return l2n(x.square().mean(1), -1)


class AttentionTransfer(DistillationLoss):
    """Temporal attention transfer (Zagoruyko & Komodakis 2017; DESIGN.md §3).

    ``L = mean_videos ‖â^S − â^F‖²₂`` with ``a_t = mean_c x_{c,t}²`` and ``â = a/‖a‖₂`` over the
    video's valid steps (videos without valid steps are left out). Works with ``F_s ≠ F_t``.
    """

    teacher_view = "video"

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            a_s = attention_profile(masked(student.features, mask))
            a_f = attention_profile(masked(teacher.features, mask))
            keep = mask.any(1)
            if not bool(keep.any()):
                return zero_loss(a_s)
            return (a_s - a_f).square().sum(1)[keep].mean()
