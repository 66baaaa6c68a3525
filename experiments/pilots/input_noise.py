"""Pilot (a measurement, not a package feature): does Gaussian input noise, the ridge
penalty's stochastic twin, bring PDAN to the linear probe?

For a linear least-squares reader, training on inputs with independent noise of variance
``sigma²`` added to every dimension is, in expectation, a ridge penalty ``N sigma² ‖w‖²``
(Bishop 1995). The probe's chosen penalties on the standardised RGB window are ``N · 10``
for most classes (``python -m kd_detect.lab.probe``: "penalty/N median"), i.e. noise of
standard deviation about 3 per standardised dimension: far stronger than anything PDAN's
recipe applies (channel input dropout 0.3, AdamW weight decay 0.05). This pilot trains a
detector exactly as ``kd-detect fit`` does, with ``sigma * N(0, 1)`` added to every fused,
standardised input value of every training step (after the recipe's input dropout; never
at evaluation)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/input_noise.py SIGMA -- fit \\
        --config experiments/synthetic_rgb.yaml --seed_everything=0 --data.path=data/synthetic.h5 \\
        --trainer.default_root_dir=runs/pilot/noise_SIGMA_s0 --test_after_fit=true
"""

from __future__ import annotations

import sys

import torch

import kd_detect.modules.detector as detector
from kd_detect.cli import main


def with_noise(sigma: float):
    dropout = detector.input_dropout

    def noisy(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        x = dropout(x, p, training)
        return x + sigma * torch.randn_like(x) if training and sigma > 0 else x

    return noisy


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: input_noise.py SIGMA -- <kd-detect arguments>")
    detector.input_dropout = with_noise(float(sys.argv[1]))
    sys.exit(main(sys.argv[3:]))
