"""MS-TCN-style multi-stage dilated residual TCN (Farha & Gall, CVPR 2019), DESIGN.md §2.

One stage::

    h_0 = mask · Conv1x1_{in→H}(input)
    h_l = mask · (h_{l-1} + Dropout(Conv1x1(ReLU(DilConv_{k=3, d=2^(l-1)}(h_{l-1})))))
    logits_s = mask · Conv1x1_{H→C}(h_L)

Stage 1 reads the features; stage ``s > 1`` reads ``mask · sigmoid(logits_{s-1})`` (the
multi-label analogue of MS-TCN's softmax). :meth:`MSTCN.forward_stages` returns every
stage's logits so a loss can supervise all of them; :meth:`forward` returns the last stage's
logits and its last layer's output as ``features``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import DetectionHead, HeadOutput, expand_mask
from .tcn import check_head_input, check_head_options, masked_input


class DilatedResidualLayer(nn.Module):
    """``mask · (x + Dropout(Conv1x1(ReLU(DilConv_3,d(x)))))`` for an ``x`` zero on padding."""

    def __init__(self, channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv_dilated = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, m: Tensor) -> Tensor:
        out = self.dropout(self.conv_1x1(self.conv_dilated(x).relu()))
        return (x + out) * m


class SingleStage(nn.Module):
    """One MS-TCN stage; returns ``(features (B,H,T), logits (B,C,T))``."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(in_dim, hidden, 1)
        self.layers = nn.ModuleList(DilatedResidualLayer(hidden, 2**i, dropout) for i in range(num_layers))
        self.conv_out = nn.Conv1d(hidden, num_classes, 1)

    def forward(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv_in(x) * m
        for layer in self.layers:
            h = layer(h, m)
        return h, self.conv_out(h) * m


class MSTCN(DetectionHead):
    """``num_stages`` stages of ``num_layers`` dilated residual layers (kernel 3, dilation 2^i)."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        num_stages: int = 2,
        num_layers: int = 10,
        hidden: int = 64,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_head_options("MSTCN", hidden, num_layers, dropout)
        if num_stages < 1:
            raise ValueError(f"MSTCN: num_stages must be >= 1, got {num_stages}")
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.feature_dim = int(hidden)
        self.stages = nn.ModuleList(
            SingleStage(in_dim if s == 0 else num_classes, hidden, num_classes, num_layers, dropout)
            for s in range(num_stages)
        )

    def _run(self, x: Tensor, mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        if not torch.jit.is_scripting():  # the checks name the head class (Python only)
            check_head_input(self, x, mask)
        m = expand_mask(mask, x)
        h, features = masked_input(x, mask), x
        all_logits: list[Tensor] = []
        for stage in self.stages:  # stage s > 1 reads mask · sigmoid(previous logits)
            features, logits = stage(h, m)
            all_logits.append(logits)
            h = torch.sigmoid(logits) * m
        return features, all_logits

    def forward_stages(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        """Logits ``(B, C, T)`` of every stage, first to last."""
        return self._run(x, mask)[1]

    def forward(self, x: Tensor, mask: Tensor) -> HeadOutput:
        features, all_logits = self._run(x, mask)
        return HeadOutput(features, all_logits[-1])
