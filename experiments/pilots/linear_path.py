"""Pilot (a measurement, not a package feature): does a strongly penalised linear path beside
PDAN bring the detector to the linear probe of its own input?

The logistic probe (``experiments/pilots/logistic_probe.py``) matches the ridge probe once
its penalty ``lam ‖W‖²`` on the mean BCE (summed over classes) is strong, ``lam >= 0.1``.
PDAN's own linear path, ``classifier · input_conv``, shares its weights with the nonlinear
one and is never penalised like that. This pilot adds a separate linear reader of the
standardised inputs over ``±K`` steps (a same-padded ``Conv1d(D, C, 2K + 1)``, zero at
start) whose logits are added to PDAN's, and the probe's penalty on its weights::

    loss = masked BCE (mean over steps and classes) + (lam / C) · ‖W_linear‖²

(``/ C`` turns the logistic pilot's per-class sum into the detectors' per-class mean, so
``lam`` is on the same scale). The linear path reads the inputs before the recipe's input
dropout, as the probe does. Everything else is ``kd-detect fit``'s::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/linear_path.py LAM[:K] -- fit \\
        --config experiments/synthetic_rgb.yaml --seed_everything=0 --data.path=data/synthetic.h5 \\
        --trainer.default_root_dir=runs/pilot/linear_LAM_s0 --test_after_fit=true
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

import kd_detect.modules.detector as detector
from kd_detect.cli import main
from kd_detect.data.batch import MASK
from kd_detect.models.heads.base import HeadOutput


def patch(lam: float, context: int, only: bool = False) -> None:
    cls = detector.DetectorModule
    build, loss = cls.build_model, cls.detection_loss

    def build_model(self: Any) -> None:
        build(self)
        self.linear_path = nn.Conv1d(self.head.in_dim, self.num_classes, 2 * context + 1, padding=context)
        nn.init.zeros_(self.linear_path.weight)
        nn.init.zeros_(self.linear_path.bias)

    def forward(self: Any, batch: dict[str, Any]) -> HeadOutput:
        mask = batch[MASK]
        x = torch.cat(list(self.encode(batch).values()), dim=1)
        out = self.head(detector.input_dropout(x, self.input_dropout, self.training), mask)
        m = mask.unsqueeze(1).to(x.dtype)
        linear = self.linear_path(x * m) * m
        return HeadOutput(out.features, linear if only else out.logits + linear)

    def detection_loss(self: Any, out: HeadOutput, batch: dict[str, Any]) -> Tensor:
        value = loss(self, out, batch)
        if self.training and lam > 0:
            value = value + lam / self.num_classes * self.linear_path.weight.pow(2).sum()
        return value

    cls.build_model, cls.forward, cls.detection_loss = build_model, forward, detection_loss


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: linear_path.py LAM[:K[:only]] -- <kd-detect arguments>")
    lam, _, rest = sys.argv[1].partition(":")
    k, _, only = rest.partition(":")
    patch(float(lam), int(k or 2), only == "only")
    sys.exit(main(sys.argv[3:]))
