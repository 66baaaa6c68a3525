"""Relational baselines (DESIGN.md §3): similarity-preserving KD, RKD and PKT, over valid
steps (SP per video, RKD/PKT on steps sampled from the whole batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kd_detect.distill._common import fp32_region, l2n, masked, sample_rows, valid_rows, zero_loss
from kd_detect.distill.base import DistillationLoss, Weight
from kd_detect.models.heads.base import HeadOutput


def _sp_rows(s: Tensor, f: Tensor, c0: int, c1: int) -> Tensor:
    """``Σ_{i∈[c0,c1)} ‖Ĝ^S_i − Ĝ^F_i‖²`` per video, ``Ĝ_i`` = row ``i`` of ``XᵀX``, L2-normalised."""
    gs = l2n(torch.bmm(s[:, :, c0:c1].transpose(1, 2), s), -1)
    gf = l2n(torch.bmm(f[:, :, c0:c1].transpose(1, 2), f), -1)
    return (gs - gf).square().sum((1, 2))


class SimilarityPreserving(DistillationLoss):
    """Similarity-preserving KD (Tung & Mori 2019; DESIGN.md §3), per video over time.

    ``L = mean_videos ‖Ĝ_S − Ĝ_F‖²_F / n²`` with ``G = XᵀX`` the ``n×n`` Gram of the video's
    valid steps and ``Ĝ`` its rows L2-normalised. ``F_s ≠ F_t`` is fine. Memory: rows are
    processed ``chunk_size`` at a time, each chunk under activation checkpointing, so
    forward and backward hold ``O(B·chunk_size·T)``, never the ``T×T`` Gram (compute stays
    ``O(T²F)``: use the ``global`` gram mode for very long videos if that matters).

    Args:
        weight: loss weight.
        chunk_size: Gram rows per chunk.
    """

    teacher_view = "video"

    def __init__(self, weight: Weight = 1.0, chunk_size: int = 256) -> None:
        super().__init__(weight)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            s, f = masked(student.features, mask), masked(teacher.features, mask)
            n = mask.sum(1).to(s.dtype)
            keep = n > 0
            if not bool(keep.any()):
                return zero_loss(s)
            T = s.shape[-1]
            use_ckpt = torch.is_grad_enabled() and s.requires_grad and T > self.chunk_size
            total = s.new_zeros(s.shape[0])
            for c0 in range(0, T, self.chunk_size):
                c1 = min(c0 + self.chunk_size, T)
                if use_ckpt:
                    total = total + checkpoint(_sp_rows, s, f, c0, c1, use_reentrant=False)
                else:
                    total = total + _sp_rows(s, f, c0, c1)
            return (total / n.clamp_min(1).square())[keep].mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight_repr}, chunk_size={self.chunk_size}"


def _sampled_rows(student: Tensor, teacher: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Paired valid steps of the batch ``(N, F_s)``, ``(N, F_t)``, at most ``k`` sampled."""
    s, t = valid_rows(masked(student, mask), mask), valid_rows(masked(teacher, mask), mask)
    idx = sample_rows(s.shape[0], k, s.device)
    if idx is not None:
        s, t = s.index_select(0, idx), t.index_select(0, idx)
    return s, t


def _pdist(e: Tensor) -> Tensor:
    """Euclidean distance matrix ``(N, N)`` with an exact-0, gradient-safe diagonal."""
    sq = e.square().sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp_min(1e-12)
    return d2.sqrt() * (1 - torch.eye(e.shape[0], dtype=e.dtype, device=e.device))


def _angles(e: Tensor) -> Tensor:
    """``A[j, i, k] = cos∠(e_i − e_j, e_k − e_j)`` for all triplets (vertex ``j`` first): ``(N, N, N)``."""
    u = l2n(e[None, :, :] - e[:, None, :], -1)  # u[j, i] = (e_i − e_j)/‖e_i − e_j‖
    return torch.bmm(u, u.transpose(1, 2))


class RKD(DistillationLoss):
    """Relational KD (Park et al. 2019; DESIGN.md §3) on sampled valid steps.

    ``L = w_d · mean_{ij} ℓ(ψ_D^S, ψ_D^F) + w_a · mean_{ijk} ℓ(ψ_A^S, ψ_A^F)``, ``ℓ`` = smooth-L1,
    ``ψ_D(i,j) = ‖x_i − x_j‖ / μ`` (``μ`` = mean pairwise distance), ``ψ_A(i,j,k) =
    cos∠(x_i − x_j, x_k − x_j)``, over up to ``max_samples`` valid steps drawn from the batch
    (the ``O(N³)`` angle term makes sampling necessary). Weights 1 : 2 as in the paper
    (25 : 50 there). Needs no projection: both potentials are dimension-free.

    Args:
        weight: loss weight.
        max_samples: steps sampled per batch (uniform without replacement, global RNG).
        distance_weight: ``w_d``.
        angle_weight: ``w_a``.
    """

    def __init__(
        self, weight: Weight = 1.0, max_samples: int = 64, distance_weight: float = 1.0, angle_weight: float = 2.0
    ) -> None:
        super().__init__(weight)
        self.max_samples, self.distance_weight, self.angle_weight = int(max_samples), float(distance_weight), float(angle_weight)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            s, t = _sampled_rows(student.features, teacher.features, mask, self.max_samples)
            n = s.shape[0]
            if n < 2:
                return zero_loss(s)
            ds, dt = _pdist(s), _pdist(t)
            ds = ds / ds.sum().div(n * (n - 1)).clamp_min(1e-12)
            dt = dt / dt.sum().div(n * (n - 1)).clamp_min(1e-12)
            out = self.distance_weight * F.smooth_l1_loss(ds, dt)
            if n >= 3 and self.angle_weight:
                out = out + self.angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
            return out

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight_repr}, max_samples={self.max_samples}, distance_weight={self.distance_weight}, "
            f"angle_weight={self.angle_weight}"
        )


def pkt_conditional(x: Tensor) -> Tensor:
    """PKT's conditional probabilities: ``P[i, j] = k_ij / Σ_j k_ij``, ``k = (cos + 1)/2``."""
    xn = l2n(x, -1)
    k = (xn @ xn.T + 1) / 2
    return k / k.sum(1, keepdim=True).clamp_min(1e-12)


class PKT(DistillationLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018; DESIGN.md §3).

    ``L = 1/N Σ_i Σ_j P^F_ij log((P^F_ij + ε)/(P^S_ij + ε))`` with ``P_ij`` the cosine-kernel
    conditional distribution of :func:`pkt_conditional` over up to ``max_samples`` valid
    steps sampled from the batch (row-wise KL averaged over rows; the reference code
    averages over all ``N²`` entries, i.e. the same up to a factor ``N``).

    Args:
        weight: loss weight.
        max_samples: steps sampled per batch (uniform without replacement, global RNG).
        eps: smoothing ``ε`` inside the log.
    """

    def __init__(self, weight: Weight = 1.0, max_samples: int = 256, eps: float = 1e-7) -> None:
        super().__init__(weight)
        self.max_samples, self.eps = int(max_samples), float(eps)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            s, t = _sampled_rows(student.features, teacher.features, mask, self.max_samples)
            if s.shape[0] == 0:
                return zero_loss(s)
            ps, pt = pkt_conditional(s), pkt_conditional(t)
            return (pt * torch.log((pt + self.eps) / (ps + self.eps))).sum(1).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight_repr}, max_samples={self.max_samples}, eps={self.eps}"
