"""Atomic-level contrastive distillation, ``L_atomic`` (DESIGN.md §3).

Atoms are masked averages over consecutive non-overlapping windows of ``w`` *valid*
steps; with ``z = normalise(g(atom))`` the loss is the in-batch InfoNCE

    L = −1/N Σ_k log( exp(z^S_k·z^F_k/τ) / Σ_j exp(z^S_k·z^F_j/τ) ).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kd_detect.distill._common import (
    ProjectorKind,
    fp32_region,
    info_nce,
    l2n,
    make_projector,
    masked,
    sample_rows,
    valid_rows,
)
from kd_detect.distill.base import DistillationLoss, register
from kd_detect.models.heads.base import HeadOutput


def atom_index(mask: Tensor, window: int) -> tuple[Tensor, int]:
    """Atom id of every valid step, row-major over ``(b, t)``, and the atom count ``N``.

    Valid step number ``r`` (0-based, counted over the video's valid steps only) belongs to
    window ``r // window``; a trailing partial window is an atom of its own. Ids are
    consecutive: video ``b``'s atoms follow those of videos ``< b``."""
    mask = mask.bool()
    counts = mask.sum(1)
    rank = mask.long().cumsum(1) - 1
    n_atoms = torch.div(counts + window - 1, window, rounding_mode="floor")
    offsets = n_atoms.cumsum(0) - n_atoms
    ids = (offsets[:, None] + torch.div(rank, window, rounding_mode="floor"))[mask]
    return ids, int(n_atoms.sum().item())


def window_average(rows: Tensor, ids: Tensor, n: int) -> Tensor:
    """Average ``rows (M, F)`` (the valid steps) into ``n`` atoms by their atom ``ids (M,)``."""
    sums = rows.new_zeros(n, rows.shape[1]).index_add_(0, ids, rows)
    cnt = torch.bincount(ids, minlength=n).clamp_min(1).to(rows.dtype)
    return sums / cnt[:, None]


class InBatchContrastive(DistillationLoss):
    """Shared machinery of :class:`AtomicContrastive` and :class:`~kd_detect.distill.crd.CRD`:
    window-average valid steps into atoms, sample at most ``max_atoms`` (student and teacher
    atoms paired), project with ``g_s``/``g_t``, L2-normalise, in-batch InfoNCE."""

    def __init__(
        self,
        weight: float = 1.0,
        window: int = 4,
        embed_dim: int = 128,
        projector: ProjectorKind = "linear",
        tau: float = 0.1,
        symmetric: bool = False,
        max_atoms: int = 1024,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(weight)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if projector not in ("linear", "mlp"):
            raise ValueError(f"projector must be 'linear' or 'mlp', got {projector!r}")
        self.window, self.embed_dim, self.projector = int(window), int(embed_dim), projector
        self.tau, self.symmetric = float(tau), bool(symmetric)
        self.max_atoms, self.gather_distributed = int(max_atoms), bool(gather_distributed)

    def build(self, student_dim: int, teacher_dim: int, num_classes: int) -> None:
        self.proj_s = make_projector(student_dim, self.embed_dim, self.projector)
        self.proj_t = make_projector(teacher_dim, self.embed_dim, self.projector)

    def atoms(self, student: Tensor, teacher: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Paired (sampled) atoms ``(N, F_s)``, ``(N, F_t)`` in fp32, before projection."""
        s, t = masked(student, mask), masked(teacher, mask)
        if self.window == 1:  # atoms are the valid steps: sample first, gather only those
            s_rows, t_rows = valid_rows(s, mask), valid_rows(t, mask)
            idx = sample_rows(s_rows.shape[0], self.max_atoms, s.device)
            if idx is not None:
                s_rows, t_rows = s_rows.index_select(0, idx), t_rows.index_select(0, idx)
            return s_rows, t_rows
        ids, n = atom_index(mask, self.window)
        s_atoms = window_average(valid_rows(s, mask), ids, n)
        t_atoms = window_average(valid_rows(t, mask), ids, n)
        idx = sample_rows(n, self.max_atoms, s.device)
        if idx is not None:
            s_atoms, t_atoms = s_atoms.index_select(0, idx), t_atoms.index_select(0, idx)
        return s_atoms, t_atoms

    def embed(self, s_atoms: Tensor, t_atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Project and L2-normalise: ``(N, E)`` student and teacher embeddings."""
        return l2n(self.proj_s(s_atoms), -1), l2n(self.proj_t(t_atoms), -1)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            q, k = self.embed(*self.atoms(student.features, teacher.features, mask))
            return info_nce(q, k, self.tau, self.symmetric, self.gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, window={self.window}, embed_dim={self.embed_dim}, projector={self.projector!r}, "
            f"tau={self.tau}, symmetric={self.symmetric}, max_atoms={self.max_atoms}, "
            f"gather_distributed={self.gather_distributed}"
        )


@register("atomic")
class AtomicContrastive(InBatchContrastive):
    """Atomic-level contrastive loss (DESIGN.md §3, ``L_atomic``).

    ``L = −1/N Σ_k log softmax_j(z^S_k·z^F_j / τ)[k]``: atoms are masked averages of
    ``window`` consecutive valid steps, ``z = normalise(g(atom))`` with learned heads
    ``g_s: F_s→E``, ``g_t: F_t→E``; the positive of a student atom is the teacher atom of
    the same video and window, all other teacher atoms of the batch are negatives.

    Args:
        weight: ``λ_a``.
        window: steps per atom ``w`` (1 = per step); a trailing partial window is an atom.
        embed_dim: ``E``.
        projector: ``"linear"`` or ``"mlp"`` (Linear–ReLU–Linear).
        tau: InfoNCE temperature.
        symmetric: also add the teacher→student term (the two are averaged).
        max_atoms: at most this many atoms per batch (uniform without replacement from the
            torch global RNG, so seeding makes it reproducible); ``<= 0`` keeps all.
        gather_distributed: under DDP (world size > 1) gather teacher atoms from all ranks
            as negatives (the local chunk keeps its gradient; ranks may hold different
            atom counts).

    Batch size matters: a student atom is contrasted against the other ``N − 1`` atoms of
    its (per-GPU) batch, ``N ≤ max_atoms``; the loss is bounded by ``log N`` and the task gets
    harder as ``N`` grows, so loss values and the best ``tau`` depend on the per-GPU batch
    size and window. Without ``gather_distributed`` each GPU only sees its own negatives
    (``N`` per GPU); with it there are ``≈ world_size · N`` negatives, as on one big GPU.
    The cost is ``O(N² E)`` per step.
    """

    def __init__(
        self,
        weight: float = 1.0,
        window: int = 4,
        embed_dim: int = 128,
        projector: ProjectorKind = "linear",
        tau: float = 0.1,
        symmetric: bool = False,
        max_atoms: int = 1024,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(weight, window, embed_dim, projector, tau, symmetric, max_atoms, gather_distributed)
