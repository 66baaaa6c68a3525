"""PDAN head: Pyramid Dilated Attention Network (Dai et al., WACV 2021), DESIGN.md §2.

Structure (the authors' single-stage model)::

    h_0 = mask · Conv_{k, D→H}(x)          k = input_kernel (1 in the reference)
    h_l = mask · (h_{l-1} + Dropout(Conv1x1(ReLU(DAL_{d_l}(h_{l-1})))))   d_l = 2^(l-1), l = 1..L
    logits = mask · Conv1x1_{H→C}(h_L)              features = h_L

Dilated Attention Layer (DAL) with dilation ``d``, per channel ``c`` and step ``t``, over
the three taps ``τ ∈ {t-d, t, t+d}`` (zero outside the sequence):

    a_τ = softmax_τ( q_c(t) · k_c(τ) ),   out_c(t) = Σ_τ a_τ · (v_c(τ) + r_c[τ - t])

with bias-free 1×1 convolutions ``q, k, v`` and a learned relative-position term ``r``
(C × 3). Out-of-range taps have ``k = v = 0`` (as the reference's zero padding), so padded
steps -- zero after masking -- behave exactly like the end of the sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DetectionHead, HeadOutput, expand_mask
from .tcn import check_head_input, check_head_options, masked_input


class DilatedAttention(nn.Module):
    """DAL: per-channel softmax attention over the dilated taps ``t-d, t, t+d`` (vectorised)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.dilation = int(dilation)
        self.query = nn.Conv1d(channels, channels, 1, bias=False)
        self.key = nn.Conv1d(channels, channels, 1, bias=False)
        self.value = nn.Conv1d(channels, channels, 1, bias=False)
        self.rel_pos = nn.Parameter(torch.empty(channels, 3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.query, self.key, self.value):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        nn.init.normal_(self.rel_pos, 0.0, 1.0)

    def _taps(self, y: Tensor) -> Tensor:
        """``(B, C, T) -> (3, B, C, T)``: ``y`` at ``t-d, t, t+d``, zero outside ``[0, T)``."""
        d, steps = self.dilation, y.shape[-1]
        padded = F.pad(y, (d, d))
        return torch.stack((padded[..., :steps], y, padded[..., 2 * d : 2 * d + steps]))

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, T)``, zero on padded steps -> ``(B, C, T)``."""
        if not torch.is_grad_enabled():  # teacher, validation, inference: no graph to keep
            return self._forward_no_grad(x)
        scores = self.query(x).unsqueeze(0) * self._taps(self.key(x))  # (3, B, C, T)
        values = self._taps(self.value(x)) + self.rel_pos.t()[:, None, :, None]
        # Softmax over the 3 taps written out on the leading dim: a softmax over a last
        # dim of size 3 is several times slower on CPU.
        weights = torch.exp(scores - scores.amax(0, keepdim=True))
        return (weights * values).sum(0) / weights.sum(0)

    def _forward_no_grad(self, x: Tensor) -> Tensor:
        """:meth:`forward` without autograd: the same arithmetic in the same order (bitwise
        equal results) tap by tap on shifted views and in place, so no ``(3, B, C, T)``
        stacks are built (about 1/3 less time for a frozen teacher or at inference)."""
        d, steps = self.dilation, x.shape[-1]
        q, k, v = self.query(x), self.key(x), self.value(x)
        k_pad, v_pad = F.pad(k, (d, d)), F.pad(v, (d, d))
        rel = self.rel_pos
        w_prev = q * k_pad[..., :steps]
        w_mid = q * k
        w_next = q * k_pad[..., 2 * d : 2 * d + steps]
        top = torch.maximum(torch.maximum(w_prev, w_mid), w_next)
        w_prev.sub_(top).exp_()
        w_mid.sub_(top).exp_()
        w_next.sub_(top).exp_()
        out = torch.add(v_pad[..., :steps], rel[:, 0].unsqueeze(-1)).mul_(w_prev)
        out.add_(torch.add(v, rel[:, 1].unsqueeze(-1)).mul_(w_mid))
        out.add_(torch.add(v_pad[..., 2 * d : 2 * d + steps], rel[:, 2].unsqueeze(-1)).mul_(w_next))
        return out.div_(w_prev.add_(w_mid).add_(w_next))


class PDANBlock(nn.Module):
    """Residual block: ``mask · (x + Dropout(Conv1x1(ReLU(DAL(x)))))``."""

    def __init__(self, channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.attention = DilatedAttention(channels, dilation)
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, m: Tensor) -> Tensor:
        if not torch.is_grad_enabled():  # same values, in place (see DilatedAttention)
            out = self.dropout(self.conv_1x1(self.attention(x).relu_()))
            return out.add_(x).mul_(m)
        out = self.dropout(self.conv_1x1(self.attention(x).relu()))
        return (x + out) * m


class PDAN(DetectionHead):
    """The authors' head: 1×1 conv D→``hidden``, ``num_layers`` dilated-attention residual
    blocks (dilations 1, 2, 4, ...), 1×1 classifier. 5,858,461 parameters for D=1024,
    C=157 with the defaults (same as the reference single-stage PDAN).

    ``input_kernel`` (odd, default 1 = the reference): the width of the input projection, a
    same-padded temporal convolution over ``±(k // 2)`` steps. Every block is residual, so
    the head's linear path ``classifier · input_conv`` reads one step with ``k = 1``: any
    temporal context then passes through the attention's nonlinearity, learned from the
    training videos. With ``k > 1`` that path is a linear reader of a ``k``-step window, the
    form of the linear probe of ``kd_detect.lab.probe`` (and of the embedding convolutions of
    later heads, e.g. ActionFormer's). Zero padding and the mask keep padded steps acting like
    the sequence end, as in :class:`~kd_detect.models.heads.TCN`.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        hidden: int = 512,
        num_layers: int = 5,
        dropout: float = 0.5,
        input_kernel: int = 1,
    ) -> None:
        super().__init__()
        check_head_options("PDAN", hidden, num_layers, dropout)
        if input_kernel < 1 or input_kernel % 2 == 0:
            raise ValueError(f"PDAN: input_kernel must be a positive odd number (same padding), got {input_kernel}")
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.feature_dim = int(hidden)
        self.input_conv = nn.Conv1d(in_dim, hidden, input_kernel, padding=input_kernel // 2)
        self.blocks = nn.ModuleList(PDANBlock(hidden, 2**i, dropout) for i in range(num_layers))
        self.classifier = nn.Conv1d(hidden, num_classes, 1)

    def forward(self, x: Tensor, mask: Tensor) -> HeadOutput:
        if not torch.jit.is_scripting():  # the checks name the head class (Python only)
            check_head_input(self, x, mask)
        m = expand_mask(mask, x)
        h = self.input_conv(masked_input(x, mask)) * m
        for block in self.blocks:
            h = block(h, m)
        return HeadOutput(h, self.classifier(h) * m)
