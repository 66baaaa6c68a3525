"""Pilot (a measurement, not a package feature): does a class-balanced detection loss lift
RGB-only PDAN on the long tail?

Per class on test, RGB-only PDAN's shortfall against the linear probe of its input is
largest on classes with few training instances (docs/results.md, "Why PDAN stays below a
linear probe of its own input"). Every class shares PDAN's layers, and with a plain mean BCE
a class with ten training instances contributes few positive steps to their gradient; the
probe fits each class on its own. This pilot trains a detector exactly as ``kd-detect fit``
does, with the BCE's positive steps of class ``c`` weighted by ``(neg_c / pos_c) ** P``
(``pos_c``, ``neg_c``: the training videos' positive and negative steps of ``c``; ``P = 0``
is the recipe, ``P = 1`` balances each class's positives against its negatives)::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/class_balance.py 0.5 -- fit \
        --config experiments/synthetic_rgb.yaml --seed_everything=0 --data.path=data/synthetic.h5 \
        --trainer.default_root_dir=runs/pilot/balance_0.5_s0 --test_after_fit=true

Validation's loss (its learning-rate plateaus) uses the same weights. Measured figures:
docs/results.md, the same section.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from kd_detect.cli import main
from kd_detect.data.batch import LABELS, labelled_mask
from kd_detect.data.format import FeatureFile
from kd_detect.modules.detector import DetectorModule


def positive_weights(path: str, power: float) -> torch.Tensor:
    """``(neg_c / pos_c) ** power`` over the training videos' steps of ``path``."""
    ff = FeatureFile(path)
    pos = neg = 0
    for vid in ff.videos_in("training"):
        y = ff.read(vid, ["labels"])["labels"].astype(np.float64)
        pos, neg = pos + y.sum(0), neg + (1 - y).sum(0)
    ff.close()
    return torch.as_tensor((neg / np.maximum(pos, 1.0)) ** power, dtype=torch.float32)


def patched(weights: torch.Tensor):
    def detection_loss(self: DetectorModule, out, batch) -> torch.Tensor:
        logits, labels, mask = out.logits.float(), batch[LABELS].float(), labelled_mask(batch)
        w = weights.to(logits.device)[None, :, None]  # (1, C, 1) on (B, C, T)
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=w, reduction="none")
        valid = mask.unsqueeze(1).to(loss.dtype)
        return (loss * valid).sum() / (valid.sum() * logits.shape[1]).clamp_min(1.0)
    return detection_loss


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: class_balance.py POWER -- <kd-detect arguments, with --data.path=FILE>")
    paths = [a.split("=", 1)[1] for a in sys.argv[3:] if a.startswith("--data.path=")]
    if not paths:
        sys.exit("class_balance.py: give the feature file as --data.path=FILE")
    w = positive_weights(paths[-1], float(sys.argv[1]))
    print("positive weight per class:", " ".join(f"{v:.1f}" for v in w.tolist()), flush=True)
    DetectorModule.detection_loss = patched(w)
    sys.exit(main(sys.argv[3:]))
