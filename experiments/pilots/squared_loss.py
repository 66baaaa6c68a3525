"""Pilot (a measurement, not a package feature): is PDAN's shortfall against the linear
probe its loss?

Fit without a penalty, the linear reader of the probe's ±2-step RGB window scores 58.2 test
frame mAP with the squared loss (least squares, ``python -m kd_detect.lab.probe``'s ridge at
a negligible penalty) and 46-51 with the detectors' BCE (``logistic_probe.py`` at
``lam <= 1e-3``): on noisily labelled, nearly separable steps the BCE drives the weights
along the few directions that separate them, the squared loss does not. PDAN is trained
with the BCE and a weak penalty. This pilot trains a detector exactly as ``kd-detect fit``
does with the detection loss replaced by a squared one::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/squared_loss.py KIND -- fit \
        --config experiments/synthetic_rgb.yaml --seed_everything=0 --data.path=data/synthetic.h5 \
        --trainer.default_root_dir=runs/pilot/squared_KIND_s0 --test_after_fit=true

``KIND`` is ``logits`` (the mean squared error of the logits against the 0/1 labels: least
squares, the probe's loss) or ``brier`` (of the probabilities ``sigmoid(logits)``). The
validation loss (the learning-rate plateaus) uses the same loss; frame mAP, which chooses
the checkpoint, reads the ranking only.
"""

from __future__ import annotations

import sys

import torch

from kd_detect.cli import main
from kd_detect.data.batch import LABELS, labelled_mask
from kd_detect.modules.detector import DetectorModule


def patched(kind: str):
    def detection_loss(self: DetectorModule, out, batch) -> torch.Tensor:
        logits, labels, mask = out.logits.float(), batch[LABELS].float(), labelled_mask(batch)
        pred = logits if kind == "logits" else torch.sigmoid(logits)
        loss = (pred - labels) ** 2
        valid = mask.unsqueeze(1).to(loss.dtype)
        return (loss * valid).sum() / (valid.sum() * logits.shape[1]).clamp_min(1.0)
    return detection_loss


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--" or sys.argv[1] not in ("logits", "brier"):
        sys.exit("usage: squared_loss.py logits|brier -- <kd-detect arguments>")
    DetectorModule.detection_loss = patched(sys.argv[1])
    sys.exit(main(sys.argv[3:]))
