"""The contrastive machinery shared by :class:`~kd_detect.distill.atomic.AtomicContrastive`
(the method's ``L_atomic``) and the :class:`~kd_detect.distill.crd.CRD` baseline
(DESIGN.md §3): atoms (window averages of valid steps), in-batch InfoNCE with optional
restrictions of the negatives, and the gather of negatives across DDP ranks. Private: the
public classes are re-exported by :mod:`kd_detect.distill`.

Layout conventions: features ``(B, F, T)``, mask ``(B, T)`` bool, labels ``(B, C, T)``;
"rows" are ``(N, F)`` matrices of atoms, row-major over ``(b, window)``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_detect.distill._common import (
    NEG,
    ProjectorKind,
    fp32_region,
    l2n,
    make_projector,
    masked,
    sample_rows,
    valid_rows,
    zero_loss,
)
from kd_detect.distill.base import DistillationLoss
from kd_detect.models.heads.base import HeadOutput

NegativesKind = Literal["batch", "video"]


# ----------------------------------------------------------------------------- distributed
class _GatherWithGrad(torch.autograd.Function):
    """All-gather equal-shaped tensors; backward sums every rank's gradient for the local
    chunk (all-reduce, then take the local slice), so with DDP's gradient averaging the
    result is the gradient of the mean of the per-rank losses."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ws, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        out = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def distributed_world() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` when torch.distributed is not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_rows(xs: list[Tensor]) -> tuple[list[Tensor], int, int]:
    """Gather several ``(n_local, E)`` tensors (same ``n_local``) from all ranks, keeping
    the gradient of the local chunk. Ranks may hold different ``n_local``: sizes are
    gathered first and chunks padded to the largest. Returns the concatenated tensors
    ``(N_total, E)``, the local offset (``Σ`` sizes of lower ranks) and ``N_total``."""
    import torch.distributed as dist

    ws, rank = dist.get_world_size(), dist.get_rank()
    n = xs[0].shape[0]
    size = torch.tensor([n], device=xs[0].device, dtype=torch.long)
    sizes_l = [torch.zeros_like(size) for _ in range(ws)]
    dist.all_gather(sizes_l, size)
    sizes = [int(s.item()) for s in sizes_l]
    offset, total, n_max = sum(sizes[:rank]), sum(sizes), max(sizes)
    if total == 0:
        return xs, 0, 0
    keep = torch.cat([torch.arange(r * n_max, r * n_max + s, device=xs[0].device) for r, s in enumerate(sizes)])
    out = []
    for x in xs:
        padded = F.pad(x, (0, 0, 0, n_max - n))
        out.append(_GatherWithGrad.apply(padded).index_select(0, keep))
    return out, offset, total


# ----------------------------------------------------------------------------- InfoNCE
def allowed_keys(
    n_q: int,
    n_k: int,
    target: Tensor,
    video_q: Tensor | None = None,
    video_k: Tensor | None = None,
    labels_q: Tensor | None = None,
    labels_k: Tensor | None = None,
) -> Tensor | None:
    """``(n_q, n_k)`` bool: which keys take part in query ``i``'s softmax. The positive
    ``target[i]`` always does; a negative ``j`` is dropped when ``video_k[j] != video_q[i]``
    (within-video negatives) or when its active-class set equals the query's
    (``labels_k[j] == labels_q[i]`` on every class: a false negative). ``None`` = all keys."""
    if video_q is None and labels_q is None:
        return None
    ok = torch.ones(n_q, n_k, dtype=torch.bool, device=target.device)
    if video_q is not None and video_k is not None:
        ok &= video_q[:, None] == video_k[None, :]
    if labels_q is not None and labels_k is not None:
        a, b = labels_q.float(), labels_k.float()
        hamming = a @ (1.0 - b).T + (1.0 - a) @ b.T  # classes on which the two sets differ
        ok &= hamming > 0.5
    ok[torch.arange(n_q, device=target.device), target] = True
    return ok


def info_nce(
    q: Tensor,
    k: Tensor,
    tau: float,
    symmetric: bool = False,
    gather: bool = False,
    video: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """In-batch InfoNCE between L2-normalised ``q (N, E)`` (student) and ``k (N, E)``
    (teacher): row ``i``'s positive is ``k[i]``, its negatives the other ``k`` rows in
    ``A_i`` (all of them by default),

        L = −1/N Σ_i log( exp(q_i·k_i/τ) / Σ_{j ∈ {i} ∪ A_i} exp(q_i·k_j/τ) ),

    plus, if ``symmetric``, the teacher→student term (the two averaged; ``A`` is a symmetric
    relation, so the same sets serve). ``video (N,)``: ``A_i`` = rows of the same video only.
    ``labels (N, C)`` bool: rows whose active-class set equals row ``i``'s are removed from
    ``A_i`` (they are not negatives of the action content). A row whose ``A_i`` is empty
    contributes exactly 0. With ``gather`` and an initialised process group of world size
    > 1, the keys (and for the symmetric term the queries, and ``labels``) come from all
    ranks, so negatives grow with the world size; the local chunk keeps its gradient
    (``video`` is local, so it cannot be combined with ``gather``). Empty inputs give an
    attached 0."""
    ws, _ = distributed_world()
    if gather and ws > 1:
        if video is not None:
            raise ValueError("within-video negatives are local: do not combine them with gather_distributed")
        extra = [labels.float()] if labels is not None else []
        ks, offset, total = gather_rows(([k, q] if symmetric else [k]) + extra)
        if total == 0 or q.shape[0] == 0:
            return zero_loss(q, k, *ks)
        target = torch.arange(q.shape[0], device=q.device) + offset
        ok = allowed_keys(q.shape[0], total, target, labels_q=labels, labels_k=ks[-1] if extra else None)
        loss = F.cross_entropy(_restrict(q @ ks[0].T / tau, ok), target)
        if symmetric:
            loss = 0.5 * (loss + F.cross_entropy(_restrict(k @ ks[1].T / tau, ok), target))
        return loss
    if q.shape[0] == 0:
        return zero_loss(q, k)
    target = torch.arange(q.shape[0], device=q.device)
    ok = allowed_keys(q.shape[0], k.shape[0], target, video, video, labels, labels)
    logits = q @ k.T / tau
    loss = F.cross_entropy(_restrict(logits, ok), target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(_restrict(logits.T, ok), target))
    return loss


def _restrict(logits: Tensor, ok: Tensor | None) -> Tensor:
    return logits if ok is None else logits.masked_fill(~ok, NEG)


# ----------------------------------------------------------------------------- atoms
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


def atom_video(mask: Tensor, window: int) -> Tensor:
    """``(N,)`` the video (batch row) of every atom, in :func:`atom_index` order."""
    counts = mask.bool().sum(1)
    n_atoms = torch.div(counts + window - 1, window, rounding_mode="floor")
    return torch.repeat_interleave(torch.arange(mask.shape[0], device=mask.device), n_atoms)


def window_average(rows: Tensor, ids: Tensor, n: int) -> Tensor:
    """Average ``rows (M, F)`` (the valid steps) into ``n`` atoms by their atom ``ids (M,)``."""
    sums = rows.new_zeros(n, rows.shape[1]).index_add_(0, ids, rows)
    cnt = torch.bincount(ids, minlength=n).clamp_min(1).to(rows.dtype)
    return sums / cnt[:, None]


class AtomBatch(NamedTuple):
    """Paired (sampled) atoms: student ``(N, F_s)``, teacher ``(N, F_t)`` (fp32, before
    projection), their video ``(N,)`` and active-class sets ``(N, C)`` bool (``None`` when
    not asked for)."""

    student: Tensor
    teacher: Tensor
    video: Tensor | None
    labels: Tensor | None


class InBatchContrastive(DistillationLoss):
    """Shared machinery of :class:`~kd_detect.distill.atomic.AtomicContrastive` and
    :class:`~kd_detect.distill.crd.CRD`: window-average valid steps into atoms, sample at
    most ``max_atoms`` (student and teacher atoms paired), project with ``g_s``/``g_t``,
    L2-normalise, in-batch InfoNCE (:func:`info_nce`).

    ``exclude_same_label``: an atom's active-class set is the set of classes with a label
    ``> 0.5`` at any step of its window (from the training labels the student passes,
    see :class:`~kd_detect.distill.base.DistillationLoss`); teacher atoms with exactly the
    anchor's set are removed from its negatives. Atoms of background (empty set) are thus
    never negatives of each other. ``negatives="video"``: only the other atoms of the
    anchor's own video are negatives (no video-identity shortcut: the student cannot win by
    recognising the scene)."""

    def __init__(
        self,
        weight: float | str = 1.0,
        window: int = 4,
        embed_dim: int = 128,
        projector: ProjectorKind = "linear",
        tau: float = 0.1,
        symmetric: bool = False,
        max_atoms: int = 1024,
        gather_distributed: bool = False,
        exclude_same_label: bool = False,
        negatives: NegativesKind = "batch",
    ) -> None:
        super().__init__(weight)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if projector not in ("linear", "mlp"):
            raise ValueError(f"projector must be 'linear' or 'mlp', got {projector!r}")
        if negatives not in ("batch", "video"):
            raise ValueError(f"negatives must be 'batch' or 'video', got {negatives!r}")
        if negatives == "video" and gather_distributed:
            raise ValueError("negatives='video' keeps negatives within a video: gather_distributed adds nothing")
        self.window, self.embed_dim, self.projector = int(window), int(embed_dim), projector
        self.tau, self.symmetric = float(tau), bool(symmetric)
        self.max_atoms, self.gather_distributed = int(max_atoms), bool(gather_distributed)
        self.exclude_same_label, self.negatives = bool(exclude_same_label), negatives
        self.needs_labels = self.exclude_same_label

    def build(self, student_dim: int, teacher_dim: int, num_classes: int) -> None:
        self.proj_s = make_projector(student_dim, self.embed_dim, self.projector)
        self.proj_t = make_projector(teacher_dim, self.embed_dim, self.projector)

    def atom_batch(self, student: Tensor, teacher: Tensor, mask: Tensor, labels: Tensor | None = None) -> AtomBatch:
        """Atoms of the batch, sampled; with their videos (``negatives="video"``) and
        active-class sets (when ``labels (B, C, T)`` is given)."""
        s, t = masked(student, mask), masked(teacher, mask)
        rows = [valid_rows(s, mask), valid_rows(t, mask)]
        if labels is not None:
            rows.append(valid_rows(masked((labels > 0.5).to(s.dtype), mask), mask))
        if self.window == 1:  # atoms are the valid steps
            n = rows[0].shape[0]
            video = torch.repeat_interleave(torch.arange(mask.shape[0], device=mask.device), mask.sum(1))
        else:
            ids, n = atom_index(mask, self.window)
            rows = [window_average(r, ids, n) for r in rows]
            video = atom_video(mask, self.window)
        idx = sample_rows(n, self.max_atoms, s.device)
        if idx is not None:
            rows = [r.index_select(0, idx) for r in rows]
            video = video.index_select(0, idx)
        lab = rows[2] > 0 if labels is not None else None  # a class is active at some step of the window
        return AtomBatch(rows[0], rows[1], video if self.negatives == "video" else None, lab)

    def atoms(self, student: Tensor, teacher: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Paired (sampled) atoms ``(N, F_s)``, ``(N, F_t)`` in fp32, before projection."""
        a = self.atom_batch(student, teacher, mask)
        return a.student, a.teacher

    def embed(self, s_atoms: Tensor, t_atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Project and L2-normalise: ``(N, E)`` student and teacher embeddings."""
        return l2n(self.proj_s(s_atoms), -1), l2n(self.proj_t(t_atoms), -1)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor, labels: Tensor | None = None) -> Tensor:
        with fp32_region(student.features):
            a = self.atom_batch(student.features, teacher.features, mask, labels if self.exclude_same_label else None)
            q, k = self.embed(a.student, a.teacher)
            return info_nce(q, k, self.tau, self.symmetric, self.gather_distributed, a.video, a.labels)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight_repr}, window={self.window}, embed_dim={self.embed_dim}, "
            f"projector={self.projector!r}, tau={self.tau}, symmetric={self.symmetric}, max_atoms={self.max_atoms}, "
            f"gather_distributed={self.gather_distributed}, exclude_same_label={self.exclude_same_label}, "
            f"negatives={self.negatives!r}"
        )
