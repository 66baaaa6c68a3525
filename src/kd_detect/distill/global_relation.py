"""Global Contextual Relations, ``L_global`` (DESIGN.md §3).

``R[i, :] = softmax_j(x̂_i·x̂_j / τ_r)`` over a video's valid steps; the loss is the mean
over valid rows of ``KL(R_F[i] || R_S[i])`` (mode ``kl``), or
``‖ŜᵀŜ − F̂ᵀF̂‖²_F / n²`` (mode ``gram``). Memory is linear in ``T`` in both modes. With
``center`` each video's masked temporal mean is subtracted before normalising.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from kd_detect.distill._common import NEG, center, fp32_region, l2n, masked, zero_loss
from kd_detect.distill.base import DistillationLoss, Weight
from kd_detect.models.heads.base import HeadOutput


class _RelationKL(torch.autograd.Function):
    """``Σ_b Σ_i w_bi · KL(R_F[b,i] || R_S[b,i])``, computed in row panels, linear memory.

    Inputs: ``s (B, T, F_s)`` and ``f (B, T, F_t)`` L2-normalised (0 on padding), ``valid
    (B, T)`` bool, row weights ``w (B, T)`` (0 on padded rows).

    With ``‖x‖ ∈ {0, 1}`` every logit ``z_ij = x_i·x_j/τ`` is ``≤ 1/τ`` and each valid
    unit row reaches it on the diagonal, so ``E_ij = exp(z_ij − 1/τ)`` (0 where ``i`` or
    ``j`` is padded) is a stable, **symmetric** unnormalised softmax: ``p_ij = E_ij / S_i``
    with ``S_i = Σ_j E_ij``. Symmetry halves the work: only the upper-triangular panels
    ``rows [c0, c1) × cols [c0, T)`` are formed; row sums come from the panel, the
    remaining column sums from its transpose. Forward keeps ``O(B·T)`` statistics; backward
    recomputes each panel and uses the closed forms
    ``∂L/∂z_ij + ∂L/∂z_ji = E^S_ij (a_i + a_j) − E^F_ij (c_i + c_j)`` with ``a = w/S^S``,
    ``c = w/S^F`` (student side), so neither pass holds more than ``B·chunk·T`` logits (``chunk`` capped by
    :func:`panel_rows`).

    One GEMM per panel and side gives the shifted, masked logits directly through two
    extra channels: rows ``[x_i, pad_i, 1]`` times columns ``[x_j/τ, 1, pad_j − 1/τ]``,
    ``pad ∈ {0, NEG}``.

    Limitation (documented, fp32): a valid step whose features are exactly 0 has a row of
    ``exp(−1/τ)`` entries, which underflows for ``τ < ~0.012``.
    """

    @staticmethod
    def _operands(x: Tensor, valid: Tensor, tau: float) -> tuple[Tensor, Tensor]:
        """Rows ``[x, pad, 1]`` and columns ``[x/τ, 1, pad − 1/τ]`` as ``(B, T, F+2)`` views of
        channel-major ``(B, F+2, T)`` buffers: ``x`` is itself a ``(B, T, F)`` view of
        ``(B, F, T)`` features, so filling them is a plain copy (no transpose), and the GEMMs
        take the views as transposed operands. Written in place: no temporaries."""
        B, T, Fd = x.shape
        xc = x.transpose(1, 2)  # (B, F, T)
        rows = x.new_empty(B, Fd + 2, T)
        cols = x.new_empty(B, Fd + 2, T)
        rows[:, :Fd].copy_(xc)
        torch.div(xc, tau, out=cols[:, :Fd])
        rows[:, Fd].zero_().masked_fill_(~valid, NEG)
        rows[:, Fd + 1].fill_(1.0)
        cols[:, Fd].fill_(1.0)
        torch.sub(rows[:, Fd], 1.0 / tau, out=cols[:, Fd + 1])
        return rows.transpose(1, 2), cols.transpose(1, 2)

    @staticmethod
    def forward(ctx, s: Tensor, f: Tensor, valid: Tensor, w: Tensor, tau: float, chunk: int) -> Tensor:  # type: ignore[override]
        B, T, _ = s.shape
        chunk = panel_rows(chunk, B, T)
        rows_s, cols_s = _RelationKL._operands(s, valid, tau)
        rows_f, cols_f = _RelationKL._operands(f, valid, tau)
        sum_s, sum_f, q = s.new_zeros(B, T), s.new_zeros(B, T), s.new_zeros(B, T)
        work = _Panels(3, s, min(chunk, T))
        for c0 in range(0, T, chunk):
            c1 = min(c0 + chunk, T)
            es, ef, d = work.views(c1 - c0, T - c0)
            torch.bmm(rows_s[:, c0:c1], cols_s[:, c0:].transpose(1, 2), out=es)  # z^S − 1/τ, masked
            torch.bmm(rows_f[:, c0:c1], cols_f[:, c0:].transpose(1, 2), out=ef)
            torch.sub(ef, es, out=d)  # z^F − z^S
            es.exp_()
            ef.exp_()
            d.mul_(ef)  # E^F ⊙ (z^F − z^S): symmetric like E
            for acc, m in ((sum_s, es), (sum_f, ef), (q, d)):
                acc[:, c0:c1] += m.sum(-1)
                acc[:, c1:] += m[:, :, c1 - c0 :].sum(-2)
        del work
        # the clamp only matters for rows without any valid column (weight 0)
        sum_s, sum_f = sum_s.clamp_min(1e-30), sum_f.clamp_min(1e-30)
        log_ratio = sum_s.log() - sum_f.log()  # log p^F − log p^S = z^F − z^S + log_ratio
        kl = q / sum_f + log_ratio
        ctx.save_for_backward(s, f, valid, w, sum_s, sum_f, log_ratio, kl)
        ctx.tau, ctx.chunk = tau, chunk
        return (kl * w).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        s, f, valid, w, sum_s, sum_f, log_ratio, kl = ctx.saved_tensors
        tau, chunk = ctx.tau, ctx.chunk
        need_s, need_f = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        B, T, _ = s.shape
        rows_s, cols_s = _RelationKL._operands(s, valid, tau)
        rows_f, cols_f = _RelationKL._operands(f, valid, tau)
        gw = w * grad
        a, c = gw / sum_s, gw / sum_f  # (B, T)
        alpha_f = c * (log_ratio - kl)  # teacher side: ∂KL_i/∂z^F_ij = p^F_ij (z^F_ij − z^S_ij + log_ratio_i − KL_i)
        gs = torch.zeros_like(s) if need_s else None
        gf = torch.zeros_like(f) if need_f else None
        work = _Panels(3, s, min(chunk, T))
        for c0 in range(0, T, chunk):
            c1 = min(c0 + chunk, T)
            es, ef, tmp = work.views(c1 - c0, T - c0)
            torch.bmm(rows_s[:, c0:c1], cols_s[:, c0:].transpose(1, 2), out=es)
            torch.bmm(rows_f[:, c0:c1], cols_f[:, c0:].transpose(1, 2), out=ef)
            if need_f:  # rare: only when the teacher input requires grad
                assert gf is not None
                m = (ef - es).mul_(c[:, c0:c1, None] + c[:, None, c0:]).add_(alpha_f[:, c0:c1, None] + alpha_f[:, None, c0:])
                m.mul_(ef.exp())
                _panel_grad(gf, m, f, c0, c1, tau)
                del m
            if need_s:
                assert gs is not None
                es.exp_().mul_(torch.add(a[:, c0:c1, None], a[:, None, c0:], out=tmp))
                ef.exp_().mul_(torch.add(c[:, c0:c1, None], c[:, None, c0:], out=tmp))
                _panel_grad(gs, es.sub_(ef), s, c0, c1, tau)
        return gs, gf, None, None, None, None


#: At most this many elements per panel work buffer (4 MiB in fp32): the effective rows
#: per panel are ``min(chunk_size, max(8, PANEL_ELEMENTS // (B·T)))``, so the panels stay a
#: few MiB however long the videos or large the batch and the peak memory is the ``O(B·T·F)``
#: operands plus a constant (with ``chunk_size`` rows alone it would be ``3·B·chunk_size·T``
#: floats: 48 MiB for one 16k-step video, 190 MiB for 32 TSU-length videos).
PANEL_ELEMENTS = 1 << 20


def panel_rows(chunk: int, batch: int, steps: int) -> int:
    """Rows per panel: ``chunk``, capped so one ``(B, rows, T)`` buffer has at most
    :data:`PANEL_ELEMENTS` elements (never fewer than 8 rows, nor more than ``chunk``)."""
    return max(1, min(chunk, max(8, PANEL_ELEMENTS // max(1, batch * steps))))


class _Panels:
    """``n`` reusable work buffers for ``(B, rows, width)`` panels (allocated once per pass,
    so the allocator never has to find room for a new panel)."""

    def __init__(self, n: int, like: Tensor, rows: int) -> None:
        B, T, _ = like.shape
        self.B, self.bufs = B, [like.new_empty(B * rows * T) for _ in range(n)]

    def views(self, rows: int, width: int) -> list[Tensor]:
        k = self.B * rows * width
        return [b[:k].view(self.B, rows, width) for b in self.bufs]


def _panel_grad(g: Tensor, m: Tensor, x: Tensor, c0: int, c1: int, tau: float) -> None:
    """Accumulate the symmetric ``M`` panel ``rows [c0, c1) × cols [c0, T)``: ``g_i += Σ_j M_ij x_j / τ``
    for the panel rows, and the transposed off-diagonal part for columns ``≥ c1``."""
    g[:, c0:c1] += torch.bmm(m, x[:, c0:]).div_(tau)
    if c1 < x.shape[1]:
        g[:, c1:] += torch.bmm(m[:, :, c1 - c0 :].transpose(1, 2), x[:, c0:c1]).div_(tau)


def relation_kl(s: Tensor, f: Tensor, mask: Tensor, tau: float, chunk_size: int) -> Tensor:
    """Mean over valid rows of ``KL(R_F[i] || R_S[i])``. ``s (B, F_s, T)``, ``f (B, F_t, T)``
    L2-normalised over channels and 0 on padding."""
    n_rows = mask.sum()
    if n_rows == 0:
        return zero_loss(s)
    w = mask.to(s.dtype) / n_rows.to(s.dtype)
    return _RelationKL.apply(s.transpose(1, 2), f.transpose(1, 2), mask, w, float(tau), int(chunk_size))


def relation_gram(s: Tensor, f: Tensor, mask: Tensor) -> Tensor:
    """Mean over videos (with ≥ 1 valid step) of ``‖SᵀS − FᵀF‖²_F / n²`` through
    ``‖AAᵀ‖²_F − 2‖ABᵀ‖²_F + ‖BBᵀ‖²_F`` (channel Grams, ``F×F``); ``s (B, F_s, T)`` and
    ``f (B, F_t, T)`` are 0 on padding. Tiny negative values from cancellation are clamped."""
    n = mask.sum(1).to(s.dtype)
    keep = n > 0
    if not bool(keep.any()):
        return zero_loss(s)
    ss = torch.bmm(s, s.transpose(1, 2)).square().sum((1, 2))
    ff = torch.bmm(f, f.transpose(1, 2)).square().sum((1, 2))
    sf = torch.bmm(s, f.transpose(1, 2)).square().sum((1, 2))
    per_video = (ss - 2 * sf + ff).clamp_min(0) / n.clamp_min(1).square()
    return per_video[keep].mean()


class GlobalContextualRelation(DistillationLoss):
    """Global Contextual Relations (DESIGN.md §3, ``L_global``).

    ``kl``: ``L = 1/N_rows Σ_{b, i valid} KL(R_F[b,i] || R_S[b,i])`` with
    ``R[i, :] = softmax_{j valid}(x̂_i·x̂_j / τ_r)``; ``gram``: ``L = mean_b ‖ŜᵀŜ − F̂ᵀF̂‖²_F / n_b²``.
    Relations are ``T×T`` so ``F_s ≠ F_t`` is fine; there is nothing learnable.

    Memory: ``kl`` is computed in row chunks (at most ``chunk_size`` rows, and at most
    :data:`PANEL_ELEMENTS` elements per work buffer) with a hand-written backward (peak
    ``O(B·T·F)`` plus a constant, linear in ``T``; a ``T×T`` relation is never stored);
    ``gram`` uses channel Grams (``O(B·F²)``). Both are invariant to a positive rescaling of
    any step (features are L2-normalised per step).

    Args:
        weight: ``λ_g``.
        mode: ``"kl"`` (default) or ``"gram"``.
        tau_r: relation temperature (``kl`` only). Default 0.1: cosine similarities in
            ``[−1, 1]`` become logits in ``[−10, 10]``, so a row can concentrate on the steps
            that really resemble step ``i`` (a range of ``e^20``) instead of being nearly
            uniform over thousands of steps, while staying smooth enough to carry gradient
            to every step (the same value as the contrastive ``τ``). In fp32 keep
            ``τ_r ≳ 0.02`` if a valid step can have exactly-zero features (its relation row
            is ``exp(−1/τ_r)``-small before normalisation and would underflow).
        chunk_size: at most this many rows per chunk (``kl`` only); fewer when ``B·T`` is
            large, so a chunk's work buffers stay within :data:`PANEL_ELEMENTS` elements
            (memory ``∝ B·T·F`` plus a constant).
        center: subtract each video's masked temporal mean ``μ = Σ_t m_t x_t / Σ_t m_t``
            (padding excluded) from student and teacher features before normalising,
            ``x̂_t = normalise(x_t − μ)``. Uncentred features share a large per-video
            component (the review measured a mean within-video teacher cosine of 0.755), which
            makes every relation row nearly uniform; centring compares steps by how they
            differ within the video. Invariant to adding a per-video constant vector.
            Default ``False`` (the paper).

    YAML::

        global:
          class_path: kd_detect.distill.GlobalContextualRelation
          init_args: {weight: 0.1, center: true}
    """

    teacher_view = "video"

    def __init__(
        self,
        weight: Weight = 1.0,
        mode: Literal["kl", "gram"] = "kl",
        tau_r: float = 0.1,
        chunk_size: int = 256,
        center: bool = False,
    ) -> None:
        super().__init__(weight)
        self.center = bool(center)
        if mode not in ("kl", "gram"):
            raise ValueError(f"mode must be 'kl' or 'gram', got {mode!r}")
        if tau_r <= 0 or chunk_size < 1:
            raise ValueError("tau_r must be > 0 and chunk_size >= 1")
        self.mode, self.tau_r, self.chunk_size = mode, float(tau_r), int(chunk_size)

    def prepare(self, x: Tensor, mask: Tensor) -> Tensor:
        """Features before normalising: masked, and centred per video with ``center``."""
        return center(x, mask) if self.center else masked(x, mask)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        with fp32_region(student.features):
            s = l2n(self.prepare(student.features, mask), 1)
            f = l2n(self.prepare(teacher.features, mask), 1)
            if self.mode == "gram":
                return relation_gram(s, f, mask)
            return relation_kl(s, f, mask, self.tau_r, self.chunk_size)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight_repr}, mode={self.mode!r}, tau_r={self.tau_r}, chunk_size={self.chunk_size}, "
            f"center={self.center}"
        )
