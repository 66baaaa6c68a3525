"""Sanity check of the synthetic benchmark (a script, not a test).

Trains a tiny temporal conv net (dilated residual 1-D convs, a few hundred Adam steps on
CPU) on several modality sets of a synthetic file and prints the per-frame mAP on the
``testing`` subset (DESIGN.md §5: valid steps pooled, per-class AP, mean over classes
with a positive) next to chance (= mean positive prevalence of those classes). The
benchmark is meaningful when ``rgb+flow+pose`` beats ``rgb`` by 10+ points and ``rgb`` is
well above chance.

    python -m data_prep.synthetic_check [--file data/synthetic.h5] [--seed 0] [--steps 400]

Measured on the v1 world (``--gen preset=v1``; the figures predate benchmark v2), 300 Adam
steps, test-subset frame mAP (chance 4.5 / 4.9):

    seed  rgb   flow  pose  rgb+flow+pose  gap   (confusable pairs: rgb -> all)
    0     65.7  61.8  72.0  95.0           29.3  (56.3 -> 96.3)
    1     71.4  73.7  71.0  92.7           21.3  (54.0 -> 89.5)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MultilabelAveragePrecision

from data_prep.synthetic import generate
from kd_detect.data.datamodule import FeatureDataModule


class TinyTCN(nn.Module):
    """1x1 input conv, dilated residual blocks (dilations 1, 2, 4, 8), 1x1 classifier."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.inp = nn.Conv1d(in_dim, hidden, 1)
        self.blocks = nn.ModuleList(nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d) for d in (1, 2, 4, 8))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv1d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None].float()
        h = self.inp(x) * m
        for conv in self.blocks:
            h = (h + self.drop(torch.relu(conv(h)))) * m
        return self.out(h)


def frame_map(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Per-frame mAP over classes with a positive; also the per-class APs (NaN if none)."""
    ap = MultilabelAveragePrecision(num_labels=targets.shape[1], average=None)(scores, targets.long())
    has_pos = targets.sum(0) > 0
    ap = torch.where(has_pos, ap, torch.full_like(ap, float("nan")))
    return float(ap[has_pos].mean()), ap


def run(path: Path, modalities: list[str], steps: int, seed: int, lr: float = 1e-3) -> tuple[float, torch.Tensor]:
    torch.manual_seed(seed)
    dm = FeatureDataModule(str(path), modalities=modalities, batch_size=16, eval_batch_size=32, preload=True,
                           seed=seed)
    model = TinyTCN(sum(dm.modality_dims.values()), dm.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = dm.train_dataloader()
    done, epoch = 0, 0
    model.train()
    while done < steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            x = torch.cat([batch[m] for m in modalities], dim=1)
            logits = model(x, batch["mask"])
            loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")
            loss = (loss.mean(1) * batch["mask"]).sum() / batch["mask"].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
        epoch += 1
    model.eval()
    scores, targets = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            x = torch.cat([batch[m] for m in modalities], dim=1)
            prob = torch.sigmoid(model(x, batch["mask"]))
            valid = batch["mask"]
            scores.append(prob.transpose(1, 2)[valid])
            targets.append(batch["labels"].transpose(1, 2)[valid])
    return frame_map(torch.cat(scores), torch.cat(targets))


def _value(text: str) -> int | float | str:
    """``--gen`` values: an int, else a float, else the string (``preset=v1``)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=None, help="synthetic file (default: generate one)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (when generating) and training seed")
    parser.add_argument("--steps", type=int, default=400, help="Adam steps per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sets", default="rgb,flow,pose,rgb+flow+pose", help="comma-separated modality sets")
    parser.add_argument("--gen", nargs="*", default=[], metavar="KEY=VALUE",
                        help="generator options when generating, e.g. preset=v1 rgb_noise=0.8 blur=2")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            t0 = time.time()
            options = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.gen)}
            path = generate(Path(tmp) / "synthetic.h5", seed=args.seed, **options)
            print(f"generated {path.name} (seed {args.seed}) in {time.time() - t0:.1f}s")
        dm = FeatureDataModule(str(path), batch_size=64)
        prevalence, has_pos = 0.0, None
        total = torch.zeros(dm.num_classes)
        count = 0
        for batch in dm.test_dataloader():
            valid = batch["mask"]
            total += batch["labels"].transpose(1, 2)[valid].sum(0)
            count += int(valid.sum())
        has_pos = total > 0
        prevalence = float((total[has_pos] / count).mean())
        print(f"chance (mean positive prevalence, test): {100 * prevalence:.1f}")
        with h5py.File(path, "r") as h5:  # the generator records its confusable pairs (v1 and v2)
            pairs = np.asarray(h5.attrs.get("confusable_pairs", np.zeros((0, 2))), dtype=np.int64).ravel().tolist()
        results = {}
        for spec in args.sets.split(","):
            mods = spec.split("+")
            t0 = time.time()
            value, ap = run(path, mods, args.steps, args.seed)
            results[spec] = value
            pair_ap = float(ap[pairs].nanmean()) if pairs else float("nan")
            print(f"{spec:>16}: frame mAP {100 * value:5.1f}   confusable-pair classes {100 * pair_ap:5.1f}"
                  f"   ({time.time() - t0:.0f}s)")
        if "rgb" in results and "rgb+flow+pose" in results:
            print(f"gap rgb+flow+pose - rgb: {100 * (results['rgb+flow+pose'] - results['rgb']):.1f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
