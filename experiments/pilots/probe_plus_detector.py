"""Pilot (a measurement, not a package feature): does a trained detector know anything the linear probe does not?

The RGB-only PDAN scores below a linear probe of its own input on the synthetic benchmark.
If PDAN had learnt something the probe misses (longer context, non-linear evidence) and lost
it to variance elsewhere, the sum of the two would beat the probe. This fits the probe as the
detectors would (per-class logistic regression with an L2 penalty on the standardised ±k-step
inputs, ``logistic_probe.fit_logistic``), then for each checkpoint scores

    s_t,c = probe_t,c + a · detector_t,c          (both logits)

for a grid of weights ``a`` and prints validation and test frame mAP for each, and the test
figure at the ``a`` chosen on validation::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/probe_plus_detector.py --data data/synthetic.h5 \
        runs/seed{s}/synthetic_rgb --seeds 0 1 2 3 4

``a = 0`` is the probe alone. Measured figures: docs/results.md, "Why PDAN stays below a
linear probe of its own input".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from logistic_probe import fit_logistic
from per_class_ap import load

from kd_detect.data.batch import MASK, META, to_model_layout
from kd_detect.data.feature_data import FeatureData
from kd_detect.lab.probe import frame_ap, probe_inputs

SPLITS = {"val": "validation", "test": "testing"}


def detector_logits(model, data: FeatureData, split: str) -> dict[str, np.ndarray]:
    """``{video id: (T, C) logits}`` of ``model`` on ``split``'s valid steps."""
    out = {}
    with torch.no_grad():
        for batch in data.loader(split):
            meta, batch = batch[META], to_model_layout(batch)
            logits = model(batch).logits.float()
            for i, vid in enumerate(meta["video_id"]):
                out[vid] = logits[i, :, : int(batch[MASK][i].sum())].T.numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--penalty", type=float, default=0.1, help="the probe's L2 penalty (logistic_probe.py)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.1, 0.25, 0.5, 1, 2, 4])
    parser.add_argument("run", help="run directory with {s} for the seed (its best.ckpt is read)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    _, splits = probe_inputs(args.data, ["rgb"], 2, ("training", *SPLITS.values()))
    x = torch.as_tensor(np.concatenate(splits["training"].features))
    y = torch.as_tensor(np.concatenate(splits["training"].labels))
    w, b = (t.numpy() for t in fit_logistic(x, y, args.penalty))
    probe = {s: [f @ w + b for f in splits[name].features] for s, name in SPLITS.items()}
    labels = {s: splits[name].labels for s, name in SPLITS.items()}
    data = FeatureData(args.data, modalities=None, eval_batch_size=16)
    order = {s: list(data.feature_file.videos_in(name)) for s, name in SPLITS.items()}  # the probe's video order
    print("weight a: " + "  ".join(f"{a:g}" for a in args.weights) + "   (validation / test frame mAP %)")
    for seed in args.seeds:
        model = load(Path(args.run.format(s=seed)) / "best.ckpt")
        mine = {}
        for s in SPLITS:
            by_video = detector_logits(model, data, s)
            mine[s] = [by_video[v] for v in order[s]]
        maps = np.array([[100 * np.nanmean(frame_ap([p + a * q for p, q in zip(probe[s], mine[s])], labels[s]))
                          for s in SPLITS] for a in args.weights])
        alone = [100 * np.nanmean(frame_ap(mine[s], labels[s])) for s in SPLITS]
        chosen = int(maps[:, 0].argmax())
        print(f"seed {seed}: detector alone {alone[0]:.2f} / {alone[1]:.2f}; "
              + "  ".join(f"{v:.2f}/{t:.2f}" for v, t in maps)
              + f"; a chosen on validation {args.weights[chosen]:g}: test {maps[chosen, 1]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
