"""The detection-head contract (DESIGN.md §2).

A head maps features ``x (B, D, T)`` and a valid-step mask ``mask (B, T)`` (bool) to a
:class:`HeadOutput`: ``features (B, F, T)`` -- the last temporal layer's output, before
the classifier (for a head of several branches, the branch distillation trains, e.g.
:class:`~kd_detect.models.heads.Decomposed`'s motion branch) -- and per-step
``logits (B, C, T)``. Padded steps never influence valid ones, and their outputs are zero.
"""

# No `from __future__ import annotations` here: TorchScript (kd-detect export) reads the
# class annotations of DetectionHead and cannot resolve them as strings.
from typing import NamedTuple

import torch
from torch import Tensor, nn


class HeadOutput(NamedTuple):
    """What a detector (and a teacher cache) hands to losses and distillation plugins."""

    features: Tensor  # (B, F, T)
    logits: Tensor  # (B, C, T)

    def detach(self) -> "HeadOutput":
        return HeadOutput(self.features.detach(), self.logits.detach())

    def crop(self, start: int, stop: int) -> "HeadOutput":
        return HeadOutput(self.features[..., start:stop], self.logits[..., start:stop])


class DetectionHead(nn.Module):
    """Base class for temporal detection heads.

    Subclasses take ``in_dim`` and ``num_classes`` as their first two init arguments
    (so a config can give the rest and the module supplies these two: a
    ``Callable[[int, int], DetectionHead]``) and set ``self.feature_dim`` (F).
    """

    in_dim: int
    num_classes: int
    feature_dim: int

    def forward(self, x: Tensor, mask: Tensor) -> HeadOutput:  # pragma: no cover - interface
        raise NotImplementedError


def expand_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``(B, T)`` bool mask -> ``(B, 1, T)`` float in ``like``'s dtype, for ``x * m``."""
    return mask.unsqueeze(1).to(like.dtype)
