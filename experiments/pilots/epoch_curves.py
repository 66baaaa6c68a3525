"""Pilot (a measurement, not a package feature): would another checkpoint of the same fit score better on test?

Every run keeps the checkpoint of best validation frame mAP. On a small validation split
that choice could cost test accuracy a later or earlier epoch has. Train with a checkpoint
per epoch, then read them all::

    kd-detect fit --config experiments/synthetic_rgb.yaml --seed_everything=0 --data.path=data/synthetic.h5 \
        --trainer.default_root_dir=runs/curves/rgb0 \
        --trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint --trainer.callbacks.save_top_k=-1 \
        --trainer.callbacks.dirpath=runs/curves/rgb0/all "--trainer.callbacks.filename={epoch}"
    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/epoch_curves.py --data data/synthetic.h5 runs/curves/rgb0/all

It prints, per directory, the test frame mAP of the epoch of best validation mAP (the one the
run keeps), of best validation loss, of the last epoch and of the best test epoch (an upper
bound no selection rule can beat), then the test and validation curves. Measured figures:
docs/results.md, "Why PDAN stays below a linear probe of its own input".
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch
from per_class_ap import load

from kd_detect.data.batch import LABELS, MASK, to_model_layout
from kd_detect.data.feature_data import FeatureData
from kd_detect.metrics import FrameMAP
from kd_detect.modules.detector import masked_bce


def scores(model, data: FeatureData, split: str, loss: bool = True) -> tuple[float, float | None]:
    """Frame mAP (%) of ``model`` on ``split`` and, with ``loss``, its mean masked BCE there."""
    metric, losses = FrameMAP(model.num_classes), []
    with torch.no_grad():
        for batch in map(to_model_layout, data.loader(split)):
            logits = model(batch).logits.float()
            metric.update(torch.sigmoid(logits), batch[LABELS], batch[MASK])
            if loss:
                losses.append(masked_bce(logits, batch[LABELS], batch[MASK]).item())
    return 100 * metric.compute()["map"].item(), float(np.mean(losses)) if loss else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("dirs", nargs="+", help="directories of epoch=<n>.ckpt files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = FeatureData(args.data, modalities=None, eval_batch_size=16)
    for d in args.dirs:
        ckpts = sorted(Path(d).glob("epoch=*.ckpt"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
        rows = np.array([[*scores(m, data, "val"), scores(m, data, "test", loss=False)[0]] for m in map(load, ckpts)])
        val_map, val_loss, test = rows.T
        by_map, by_loss = int(val_map.argmax()), int(val_loss.argmin())
        print(f"{d}: {len(rows)} epochs; test at best validation mAP (epoch {by_map}) {test[by_map]:.2f}, "
              f"at best validation loss (epoch {by_loss}) {test[by_loss]:.2f}, last {test[-1]:.2f}, "
              f"best test (epoch {int(test.argmax())}) {test.max():.2f}")
        print("  test:       " + " ".join(f"{x:.1f}" for x in test))
        print("  validation: " + " ".join(f"{x:.1f}" for x in val_map))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
