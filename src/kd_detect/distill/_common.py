"""Helpers shared by the distillation plugins (DESIGN.md §3): fp32 regions, masking,
channel normalisation, projection heads, step sampling, and the in-batch InfoNCE used by
:class:`~kd_detect.distill.atomic.AtomicContrastive` and :class:`~kd_detect.distill.crd.CRD`.

Layout conventions: features ``(B, F, T)``, mask ``(B, T)`` bool; "rows" are ``(N, F)``
matrices of selected steps/atoms (row-major over ``(b, t)``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: finite stand-in for ``-inf`` in masked logits: ``exp`` underflows to exactly 0 and, unlike
#: ``-inf``, ``0 * (x - x)`` stays 0 so neither forward nor backward can produce NaN.
NEG = -1e9
EPS = 1e-12

ProjectorKind = Literal["linear", "mlp"]


@contextlib.contextmanager
def fp32_region(like: Tensor) -> Iterator[None]:
    """Disable autocast on ``like``'s device: everything inside runs in the inputs' dtype
    (callers cast to fp32 with :func:`to_fp32`), so bf16/fp16 training cannot overflow."""
    try:
        ctx = torch.autocast(device_type=like.device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def to_fp32(x: Tensor) -> Tensor:
    """Half/bfloat16 -> float32; float32/float64 unchanged (float64 keeps gradchecks exact)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x (B, *, T)`` with padded steps set to exactly 0 (NaN/inf garbage included), in fp32."""
    x = to_fp32(x)
    m = mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])
    return torch.where(m, x, x.new_zeros(()))


def l2n(x: Tensor, dim: int) -> Tensor:
    """L2-normalise along ``dim`` (zero vectors stay zero)."""
    return F.normalize(x, p=2.0, dim=dim, eps=EPS)


def valid_rows(x: Tensor, mask: Tensor) -> Tensor:
    """``x (B, F, T)`` -> ``(N, F)``: the valid steps, row-major over ``(b, t)``."""
    return x.transpose(1, 2)[mask]


def sample_rows(n: int, k: int, device: torch.device) -> Tensor | None:
    """Indices of ``min(n, k)`` rows drawn uniformly without replacement from the torch
    global CPU RNG (so ``seed_everything`` makes it reproducible on any device); ``None``
    when ``n <= k`` (keep everything, no RNG consumed)."""
    if k <= 0 or n <= k:
        return None
    return torch.randperm(n)[:k].to(device)


def make_projector(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    """``linear``: one ``Linear``; ``mlp``: ``Linear -> ReLU -> Linear`` with hidden width
    ``out_dim`` (the SimCLR-style 2-layer head)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))
    raise ValueError(f"projector must be 'linear' or 'mlp', got {kind!r}")


def zero_loss(*tensors: Tensor) -> Tensor:
    """A 0 that stays attached to the graph of ``tensors`` (so backward and DDP see every
    parameter) without ever producing NaN."""
    out = to_fp32(tensors[0]).new_zeros(())
    for t in tensors:
        out = out + to_fp32(t).sum() * 0.0
    return out


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
def info_nce(q: Tensor, k: Tensor, tau: float, symmetric: bool = False, gather: bool = False) -> Tensor:
    """In-batch InfoNCE between L2-normalised ``q (N, E)`` (student) and ``k (N, E)``
    (teacher): row ``i``'s positive is ``k[i]``, its negatives all other ``k`` rows,

        L = −1/N Σ_i log( exp(q_i·k_i/τ) / Σ_j exp(q_i·k_j/τ) ),

    plus, if ``symmetric``, the teacher→student term (the two averaged). With ``gather``
    and an initialised process group of world size > 1, the keys (and for the symmetric
    term the queries) come from all ranks, so negatives grow with the world size; the
    local chunk keeps its gradient. Empty inputs give an attached 0."""
    ws, _ = distributed_world()
    if gather and ws > 1:
        ks, offset, total = gather_rows([k, q] if symmetric else [k])
        if total == 0 or q.shape[0] == 0:
            return zero_loss(q, k, *ks)
        target = torch.arange(q.shape[0], device=q.device) + offset
        loss = F.cross_entropy(q @ ks[0].T / tau, target)
        if symmetric:
            loss = 0.5 * (loss + F.cross_entropy(k @ ks[1].T / tau, target))
        return loss
    if q.shape[0] == 0:
        return zero_loss(q, k)
    logits = q @ k.T / tau
    target = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss
