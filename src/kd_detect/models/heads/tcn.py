"""Plain temporal convolution head (DESIGN.md §2) and the input checks shared by all heads.

A stack of ``num_layers`` same-padded temporal convolutions (no dilation), each followed
by ReLU, dropout and the valid-step mask, then a 1×1 convolution classifier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import DetectionHead, HeadOutput, expand_mask


def check_head_input(head: DetectionHead, x: Tensor, mask: Tensor) -> None:
    """Raise a ``ValueError`` naming the head and the field when ``x``/``mask`` are malformed."""
    name = type(head).__name__
    if x.dim() != 3 or x.shape[1] != head.in_dim:
        raise ValueError(f"{name}: input 'x' must have shape (B, {head.in_dim}, T), got {tuple(x.shape)}")
    if mask.shape != (x.shape[0], x.shape[2]):
        raise ValueError(
            f"{name}: 'mask' must have shape (B, T) = {(x.shape[0], x.shape[2])} matching x, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: 'mask' must be a bool tensor (True on valid steps), got dtype {mask.dtype}")


def check_head_options(name: str, hidden: int, num_layers: int, dropout: float) -> None:
    """Validate the options every head shares."""
    if hidden < 1:
        raise ValueError(f"{name}: hidden must be >= 1, got {hidden}")
    if num_layers < 1:
        raise ValueError(f"{name}: num_layers must be >= 1, got {num_layers}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")


def masked_input(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the padded steps of the input (``where``, so NaN/inf padding cannot leak)."""
    return x.masked_fill(~mask.unsqueeze(1), 0.0)


class TCN(DetectionHead):
    """Plain TCN: ``h_l = mask · dropout(ReLU(conv_k(h_{l-1})))``, ``logits = mask · W h_L``.

    Zero padding of the convolutions plus the mask make padded steps act exactly like
    the sequence end, so appended padding never changes valid outputs.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        hidden: int = 256,
        num_layers: int = 3,
        kernel_size: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_head_options("TCN", hidden, num_layers, dropout)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"TCN: kernel_size must be a positive odd number (same padding), got {kernel_size}")
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.feature_dim = int(hidden)
        self.convs = nn.ModuleList(
            nn.Conv1d(in_dim if i == 0 else hidden, hidden, kernel_size, padding=kernel_size // 2)
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv1d(hidden, num_classes, 1)

    def forward(self, x: Tensor, mask: Tensor) -> HeadOutput:
        if not torch.jit.is_scripting():  # the checks name the head class (Python only)
            check_head_input(self, x, mask)
        m = expand_mask(mask, x)
        h = masked_input(x, mask)
        for conv in self.convs:
            h = self.dropout(conv(h).relu()) * m
        return HeadOutput(h, self.classifier(h) * m)
