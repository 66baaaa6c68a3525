"""Helpers shared by the distillation plugins (DESIGN.md §3): fp32 regions, masking,
channel normalisation, per-video centring, projection heads, step sampling. The
contrastive machinery (InfoNCE, DDP gather) is in :mod:`kd_detect.distill._contrastive`.

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


def center(x: Tensor, mask: Tensor) -> Tensor:
    """Per-video centring over time: ``x (B, F, T)`` minus each video's masked temporal mean
    ``μ_b = Σ_t m_bt x_bt / Σ_t m_bt`` (padding excluded), 0 again on padding.

    Subtracting ``μ_b`` removes what every step of a video shares (scene, appearance drift),
    so normalised steps are compared by how they *differ* within the video. A video with no
    valid step is left 0."""
    x = masked(x, mask)
    n = mask.sum(1).to(x.dtype).clamp_min(1.0)
    mu = x.sum(-1, keepdim=True) / n.view(-1, *([1] * (x.dim() - 1)))
    return masked(x - mu, mask)
