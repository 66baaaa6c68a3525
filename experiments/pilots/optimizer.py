"""Pilot (a measurement, not a package feature): does the optimiser keep PDAN below the probe?

The linear probe's edge over RGB-only PDAN is its shrinkage (docs/results.md, "Why PDAN
stays below a linear probe of its own input"). Adam scales every parameter's step by its own
gradient size, so a direction that the data barely inform moves as fast as one they inform
well; plain SGD with an L2 penalty in the loss is the optimiser under which a linear model
converges to the ridge solution (Wilson et al., NeurIPS 2017, make this argument for adaptive
methods). This pilot trains a detector exactly as ``kd-detect fit`` does, with the recipe's
AdamW replaced::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/optimizer.py sgd 0.05 1e-3 -- fit \
        --config experiments/synthetic_rgb.yaml --seed_everything=0 --data.path=data/synthetic.h5 \
        --trainer.default_root_dir=runs/pilot/sgd_0.05_1e-3_s0 --test_after_fit=true

``sgd LR L2``: SGD, Nesterov momentum 0.9, the penalty ``L2 * w`` added to every gradient;
``adam LR L2``: Adam with the same coupled penalty (not AdamW's decoupled decay). The
learning-rate schedule (halved on a validation-loss plateau) and everything else are the
recipe's. Measured figures: docs/results.md, the same section.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from kd_detect.cli import main
from kd_detect.modules.detector import DetectorModule


def patched(kind: str, lr: float, l2: float):
    def configure_optimizers(self: DetectorModule) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        if kind == "sgd":
            optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=l2)
        else:
            optimizer = torch.optim.Adam(params, lr=lr, weight_decay=l2)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.lr_factor, patience=self.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False}}
    return configure_optimizers


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] not in ("sgd", "adam") or sys.argv[4] != "--":
        sys.exit("usage: optimizer.py {sgd,adam} LR L2 -- <kd-detect arguments>")
    DetectorModule.configure_optimizers = patched(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
    sys.exit(main(sys.argv[5:]))
