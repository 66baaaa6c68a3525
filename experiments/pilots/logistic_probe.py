"""Pilot (not a package feature): is the ridge probe's lead over PDAN its squared loss, or its shrinkage?

``kd_detect.lab.probe`` fits ridge regressions to 0/1 labels. This pilot fits the same
linear reader with the detectors' loss instead: per-class logistic regression (BCE) on the
same standardised ±k-step inputs, with an L2 penalty ``lam · ‖W‖²`` added to the mean BCE,
fit to convergence by L-BFGS (full batch, from zero). It prints validation and test frame
mAP (FrameMAP, as everywhere) for each penalty, then for a per-class choice on validation
as the ridge probe makes it.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/logistic_probe.py data/synthetic.h5 \
        [--modalities rgb] [--context 2] [--penalties 1e-5 1e-4 1e-3 1e-2 0.1 0.3 1 3]

If strong penalties match the ridge probe and weak ones fall far below it, the probe's
edge is its shrinkage, not its loss. Measured figures: README, "Why PDAN stays below a
linear probe of its own input".
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from kd_detect.lab.probe import choose_per_class, frame_ap, probe_inputs


def fit_logistic(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``argmin_{W,b} mean BCE(x W + b, y) + lam ‖W‖²`` by L-BFGS from zero (the problem is convex)."""
    w = torch.zeros(x.shape[1], y.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="sum") / len(x) + lam * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--modalities", nargs="+", default=["rgb"])
    parser.add_argument("--context", type=int, default=2)
    parser.add_argument("--penalties", nargs="+", type=float, default=[1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0])
    args = parser.parse_args(argv)

    _, splits = probe_inputs(args.file, args.modalities, args.context, ("training", "validation", "testing"))
    x = torch.as_tensor(np.concatenate(splits["training"].features))
    y = torch.as_tensor(np.concatenate(splits["training"].labels))
    val, test = splits["validation"], splits["testing"]
    val_ap, test_ap = [], []
    for lam in args.penalties:
        w, b = (t.numpy() for t in fit_logistic(x, y, lam))
        val_ap.append(frame_ap([v @ w + b for v in val.features], val.labels))
        test_ap.append(frame_ap([t @ w + b for t in test.features], test.labels))
        print(f"lam {lam:g}: validation {100 * np.nanmean(val_ap[-1]):.2f}, test {100 * np.nanmean(test_ap[-1]):.2f}",
              flush=True)
    choice = choose_per_class(np.stack(val_ap))
    picked = np.stack(test_ap)[choice, np.arange(len(choice))]
    print(f"penalty chosen per class on validation: test {100 * np.nanmean(picked):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
