"""What a detector does to its input features before the head.

:class:`Standardize` subtracts a per-dimension mean and divides by a per-dimension
standard deviation, ``z_t = (f_t - mu) / sigma``, with ``mu`` and ``sigma`` measured once on
the training videos (``kd_detect.data.statistics``) and kept as buffers, so a checkpoint,
``predict`` and an exported model apply exactly the statistics the model was trained with.
Padded steps stay 0 (the mask is applied after the shift), so masking stays exact.

:func:`input_dropout` is channel dropout on the fused input ``(B, D, T)``: each feature
dimension of a video is dropped for the whole video with probability ``p`` (the rest scaled
by ``1/(1-p)``), as MS-TCN does on I3D features. It regularises a detector that would
otherwise lean on a few appearance dimensions of a small training set.

:func:`modality_dropout` drops whole modalities of a video (ModDrop, Neverova et al. 2015):
modality ``m`` of each video is replaced by zeros with probability ``p[m]``, with no
rescaling, so with standardised inputs a dropped modality reads as its training mean. A
multi-modal teacher trained this way must also detect from what is left (RGB, when only
the privileged modalities are listed), which ties its features to what the RGB student can
see. A video whose every modality was drawn to be dropped keeps them all.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor, nn


class Standardize(nn.Module):
    """``(B, D, T) -> (B, D, T)``: ``(x - mean) / std`` per dimension, 0 on padded steps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.is_ready = False  # a host copy of `ready`: forward never syncs with the device

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_ready = bool(self.ready)

    def set_statistics(self, mean, std) -> None:
        mean = torch.as_tensor(mean, dtype=self.mean.dtype).reshape(-1)
        std = torch.as_tensor(std, dtype=self.std.dtype).reshape(-1)
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"Standardize: statistics of shape {tuple(mean.shape)}, expected {tuple(self.mean.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("Standardize: every std must be positive")
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.ready.fill_(True)
        self.is_ready = True

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Without ``mask`` the padded steps are shifted too (the caller masks later)."""
        if not self.is_ready:
            raise RuntimeError(
                "Standardize: statistics not set (the module measures them on the training videos when fit starts)"
            )
        z = (x - self.mean[:, None].to(x.dtype)) / self.std[:, None].to(x.dtype)
        if mask is None:
            return z
        return z * mask.unsqueeze(1).to(z.dtype)


def input_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Channel dropout of ``(B, D, T)``: whole dimensions of a video zeroed with probability ``p``."""
    if p <= 0.0 or not training:
        return x
    return nn.functional.dropout1d(x, p, training=True)


def modality_dropout(xs: Mapping[str, Tensor], p: Mapping[str, float], training: bool) -> dict[str, Tensor]:
    """``{modality: (B, D_m, T)}`` with modality ``m`` of each video zeroed with probability ``p[m]``.

    Modalities absent from ``p`` are always kept; a video that would lose every modality keeps
    them all. Identity outside training or when no probability is positive.
    """
    xs = dict(xs)
    drawn = {m: q for m, q in p.items() if q > 0.0 and m in xs}
    if not training or not drawn:
        return xs
    first = next(iter(xs.values()))
    batch, device = first.shape[0], first.device
    keep = {m: torch.rand(batch, device=device) >= q for m, q in drawn.items()}
    if len(drawn) == len(xs):  # only then can a video lose everything
        lost_all = ~torch.stack(list(keep.values())).any(0)
        keep = {m: k | lost_all for m, k in keep.items()}
    for m, k in keep.items():
        xs[m] = xs[m] * k.to(xs[m].dtype)[:, None, None]
    return xs
