"""Action Boundary Saliency, ``L_boundary`` (DESIGN.md §3).

``b_t = mean_k ‖x̂_t − x̂_{t−k}‖₁`` over the strides ``k`` defined at ``t`` (both steps valid),
``p = softmax(b / τ_b)`` over the steps where ``b`` is defined, ``L = mean_videos KL(p_F || p_S)``;
with ``center`` each video's masked temporal mean is subtracted before normalising; with
``scale="video"`` each video's ``b`` is standardised over its defined steps before the softmax.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from kd_detect.distill._common import NEG, center, fp32_region, l2n, masked, zero_loss
from kd_detect.distill.base import DistillationLoss, Weight
from kd_detect.models.heads.base import HeadOutput


def saliency(x: Tensor, mask: Tensor, strides: tuple[int, ...], dim_scale: bool = True) -> tuple[Tensor, Tensor]:
    """Per-step saliency ``b (B, T)`` of ``x̂ (B, F, T)`` (L2-normalised, 0 on padding) and
    where it is defined, ``(B, T)`` bool: ``b_t = mean over strides k with mask[t] and
    mask[t−k] of ‖x̂_t − x̂_{t−k}‖₁`` (divided by ``√F`` when ``dim_scale``), 0 elsewhere."""
    B, Fd, T = x.shape
    total = x.new_zeros(B, T)
    count = x.new_zeros(B, T)
    for k in strides:
        if k >= T:
            continue
        pair = mask[:, k:] & mask[:, :-k]
        d = (x[:, :, k:] - x[:, :, :-k]).abs().sum(1)
        total[:, k:] += torch.where(pair, d, 0.0)
        count[:, k:] += pair
    defined = count > 0
    b = total / count.clamp_min(1)
    if dim_scale:
        b = b / math.sqrt(Fd)
    return b, defined


class BoundarySaliency(DistillationLoss):
    """Action Boundary Saliency (DESIGN.md §3, ``L_boundary``).

    ``b_t = mean_{k ∈ strides} ‖x̂_t − x̂_{t−k}‖₁`` (pairs with both steps valid),
    ``p = softmax_t(b_t / τ_b)`` over the steps where ``b_t`` is defined, and
    ``L = mean_videos KL(p_F || p_S)``; mode ``l2``: ``mean_videos mean_t (b̃^S_t − b̃^F_t)²``
    with ``b̃`` min-max normalised per video. Saliency is per step, so ``F_s ≠ F_t`` is
    fine; invariant to any positive per-step rescaling of the features. Videos with fewer
    than 2 valid steps have no defined saliency and are left out of the mean (a batch with
    none gives an attached 0).

    Args:
        weight: ``λ_b``.
        strides: the step offsets ``k`` (e.g. ``(1, 2, 4)``), averaged where defined.
        tau_b: softmax temperature (``kl``). Default 0.1. With ``dim_scale`` the saliency
            lies in ``[0, 2]`` (``‖x̂_t − x̂_{t−k}‖₁ ≤ 2√F``), the same width as the cosine
            range of the relation loss, so ``τ_b = τ_r = 0.1`` gives the same ``e^20``
            dynamic range *if* ``b`` used that range. Measured on trained synthetic models it
            does not: consecutive features are close (mean cosine 0.93 for the teacher), ``b``
            varies by about ±0.05 within a video, and ``p`` is nearly uniform (effective
            support 0.87 of the steps). See ``scale``. Larger values flatten it further.
        mode: ``"kl"`` (default) or ``"l2"``.
        dim_scale: divide ``b`` by ``√F`` (the L1 norm of a difference of unit vectors grows
            like ``√F``), so ``τ_b`` means the same for student and teacher when
            ``F_s ≠ F_t``. ``False`` gives the literal ``‖·‖₁``.
        center: subtract each video's masked temporal mean ``μ`` (padding excluded) before
            normalising, ``x̂_t = normalise(x_t − μ)``: a large shared per-video component
            shrinks every normalised change ``‖x̂_t − x̂_{t−k}‖₁``, flattening ``p``; centring
            removes it. Invariant to adding a per-video constant vector. Default ``False``.
        scale: ``"raw"`` (default) or ``"video"`` (``kl`` only). With ``"video"`` each model's
            saliency is standardised per video over its defined steps,
            ``b̃_t = (b_t − mean b) / std b`` (population std; a constant ``b`` gives a
            uniform ``p``), and ``p = softmax(b̃ / τ_b)``: ``τ_b`` is then in units of the
            video's own saliency spread (``τ_b = 1`` is a natural value). Why: with ``raw``,
            how peaked ``p`` is depends on how much a model's features jitter from step to
            step. On near-uniform targets ``KL(p_F || p_S) ≈ ½ Var_t(b_F − b_S) / τ_b²``, so
            the loss mostly asks the student to match the *size* of the teacher's
            step-to-step changes -- the flow and pose noise the teacher sees -- rather than
            *where* they peak. Standardising keeps only where: invariant to any positive
            affine map of either model's ``b``.

    YAML::

        boundary:
          class_path: kd_detect.distill.BoundarySaliency
          init_args: {weight: 0.1, center: true}
    """

    teacher_view = "video"

    def __init__(
        self,
        weight: Weight = 1.0,
        strides: tuple[int, ...] = (1,),
        tau_b: float = 0.1,
        mode: Literal["kl", "l2"] = "kl",
        dim_scale: bool = True,
        center: bool = False,
        scale: Literal["raw", "video"] = "raw",
    ) -> None:
        super().__init__(weight)
        self.center = bool(center)
        if scale not in ("raw", "video"):
            raise ValueError(f"scale must be 'raw' or 'video', got {scale!r}")
        if scale == "video" and mode != "kl":
            raise ValueError("scale='video' applies to mode 'kl' only (mode 'l2' already min-max normalises b)")
        self.scale = scale
        strides = tuple(int(k) for k in strides)
        if not strides or min(strides) < 1:
            raise ValueError(f"strides must be positive ints, got {strides}")
        if mode not in ("kl", "l2"):
            raise ValueError(f"mode must be 'kl' or 'l2', got {mode!r}")
        if tau_b <= 0:
            raise ValueError(f"tau_b must be > 0, got {tau_b}")
        self.strides, self.tau_b, self.mode, self.dim_scale = strides, float(tau_b), mode, bool(dim_scale)

    def prepare(self, x: Tensor, mask: Tensor) -> Tensor:
        """Features before normalising: masked, and centred per video with ``center``."""
        return center(x, mask) if self.center else masked(x, mask)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            s = l2n(self.prepare(student.features, mask), 1)
            f = l2n(self.prepare(teacher.features, mask), 1)
            bs, defined = saliency(s, mask, self.strides, self.dim_scale)
            bf, _ = saliency(f, mask, self.strides, self.dim_scale)
            keep = defined.any(1)
            if not bool(keep.any()):
                return zero_loss(s)
            bs, bf, defined = bs[keep], bf[keep], defined[keep]
            if self.mode == "kl":
                if self.scale == "video":
                    bs, bf = _standardise(bs, defined), _standardise(bf, defined)
                ls = torch.log_softmax((bs / self.tau_b).masked_fill(~defined, NEG), -1)
                lf = torch.log_softmax((bf / self.tau_b).masked_fill(~defined, NEG), -1)
                per_video = (lf.exp() * (lf - ls)).masked_fill(~defined, 0.0).sum(-1)
            else:
                per_video = ((_minmax(bs, defined) - _minmax(bf, defined)).square() * defined).sum(-1) / defined.sum(-1)
            return per_video.mean()

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight_repr}, strides={self.strides}, tau_b={self.tau_b}, mode={self.mode!r}, "
            f"dim_scale={self.dim_scale}, center={self.center}, scale={self.scale!r}"
        )


def _standardise(b: Tensor, defined: Tensor) -> Tensor:
    """``(b − mean) / std`` per row of ``b (B, T)`` over its defined steps (population std;
    rows with zero spread -> 0). Undefined steps are left as they are (masked later)."""
    n = defined.sum(-1, keepdim=True).clamp_min(1)
    mean = torch.where(defined, b, 0.0).sum(-1, keepdim=True) / n
    dev = torch.where(defined, b - mean, 0.0)
    std = (dev.square().sum(-1, keepdim=True) / n).sqrt()
    return torch.where(std > 1e-8, dev / std.clamp_min(1e-8), 0.0)


def _minmax(b: Tensor, defined: Tensor) -> Tensor:
    """Min-max normalise ``b (B, T)`` per row over the defined steps (constant rows -> 0)."""
    lo = b.masked_fill(~defined, math.inf).amin(-1, keepdim=True)
    hi = b.masked_fill(~defined, -math.inf).amax(-1, keepdim=True)
    return (b - lo) / (hi - lo).clamp_min(1e-6)
