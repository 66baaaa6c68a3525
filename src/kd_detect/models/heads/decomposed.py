"""Decomposed head: an appearance branch and a motion branch over the same RGB input.

After Lee et al., *Decomposed Cross-Modal Distillation for RGB-Based Temporal Action
Detection* (CVPR 2023): instead of distilling the teacher into the one representation the
detector classifies from, the student learns two, and only one of them is distilled::

    a, logits_a = PDAN_appearance(x)        m, logits_m = PDAN_motion(x)
    logits = logits_a + logits_m            features = m

The detection loss trains both branches (through the summed logits); every distillation
plugin reads ``features``, i.e. the motion branch only, so the teacher's flow/pose
knowledge has capacity of its own and never pulls on the appearance representation. At
inference it is still RGB in, scores out (twice a PDAN's compute). Summing the branches'
logits is a linear classifier on ``[a; m]``, a simpler fusion than the paper's local
attentive fusion. Without a teacher the head is an ensemble of two PDANs trained jointly:
the RGB-only control for the capacity it adds (``experiments/ablations``).

With ``detach_motion`` the detection loss does not reach the motion branch's trunk: its
classifier reads the branch's features detached, so the features are trained by
distillation alone and the detection loss trains the appearance branch and the motion
classifier (the motion branch of Hoffman et al.'s hallucination network, without their
joint fine-tuning). ``weight: auto`` cannot balance a plugin there (the detection gradient
at ``features`` is 0, and the student says so); with Adam a fixed weight is nearly
immaterial, since the branch and the plugin's own parameters learn from that term alone.

``features`` is the motion branch's last layer, not the input of one classifier over
everything; a tool that reads ``HeadOutput.features`` (``kd-detect diagnose``, the plots)
sees what was distilled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DetectionHead, HeadOutput
from .pdan import PDAN
from .tcn import check_head_input, check_head_options


class Decomposed(DetectionHead):
    """Two PDAN branches of one size on the same input; logits summed, the motion branch's
    features handed to distillation (see the module docstring).

    Args:
        in_dim, num_classes: supplied by the module.
        hidden, num_layers, dropout, input_kernel: each branch's PDAN options.
        detach_motion: the detection loss does not train the motion branch's trunk (see the
            module docstring).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        hidden: int = 512,
        num_layers: int = 5,
        dropout: float = 0.5,
        detach_motion: bool = False,
        input_kernel: int = 1,
    ) -> None:
        super().__init__()
        check_head_options("Decomposed", hidden, num_layers, dropout)  # errors name this head, not PDAN
        if input_kernel < 1 or input_kernel % 2 == 0:
            raise ValueError(f"Decomposed: input_kernel must be a positive odd number (same padding), got {input_kernel}")
        options = dict(hidden=hidden, num_layers=num_layers, dropout=dropout, input_kernel=input_kernel)
        self.appearance = PDAN(in_dim, num_classes, **options)
        self.motion = PDAN(in_dim, num_classes, **options)
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.feature_dim = int(hidden)
        self.detach_motion = bool(detach_motion)

    def forward(self, x: Tensor, mask: Tensor) -> HeadOutput:
        if not torch.jit.is_scripting():  # the checks name this head (Python only)
            check_head_input(self, x, mask)
        appearance = self.appearance(x, mask)
        motion = self.motion(x, mask)
        logits = motion.logits
        if self.detach_motion:
            logits = self.motion.classifier(motion.features.detach()) * mask.unsqueeze(1).to(logits.dtype)
        return HeadOutput(motion.features, appearance.logits + logits)
