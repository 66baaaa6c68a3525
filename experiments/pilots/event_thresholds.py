"""Pilot (a measurement, not a package feature): event-level mAP of trained runs as a
function of the segment-extraction threshold, and how confident each run is.

Event mAP (docs/metrics.md) first cuts each class's per-step probabilities at a fixed
threshold (``event_threshold``, default 0.5) into segments, so unlike frame mAP it depends on
the scores' scale, not only on their order: a model whose probabilities are lower finds
fewer segments at the same threshold. This prints, per row and threshold, the test event mAP
(mean over the seeds, and the paired difference to the first row with its 95 % t interval),
the number of segments extracted, and the row's mean probability on the positive steps. The
last column, "val", is what ``event_threshold: auto`` gives: each run's threshold chosen on
the validation videos among ``kd_detect.metrics.EVENT_THRESHOLDS``
(``EventThresholdSearch``), its test event mAP at that threshold, and the chosen thresholds::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/event_thresholds.py --data data/synthetic.h5 \\
        rgb=runs/evt/seed{s}/synthetic_rgb ours=runs/evt/seed{s}/synthetic_kd --seeds 0 1 2 3 4

Measured figures: docs/results.md, "Event-level mAP: the student is less confident".
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from per_class_ap import load  # noqa: E402

from kd_detect.data.batch import LABELS, MASK, META, to_model_layout  # noqa: E402
from kd_detect.data.feature_data import FeatureData  # noqa: E402
from kd_detect.lab.compare import t_interval  # noqa: E402
from kd_detect.metrics import EVENT_THRESHOLDS, EventMAP, EventThresholdSearch  # noqa: E402


def chosen_on_validation(model, data: FeatureData) -> float:
    """The threshold ``event_threshold: auto`` chooses for ``model``: best validation event mAP."""
    search = EventThresholdSearch(model.num_classes, EVENT_THRESHOLDS)
    with torch.no_grad():
        for batch in data.loader("val"):
            meta, batch = batch[META], to_model_layout(batch)
            search.update(torch.sigmoid(model(batch).logits.float()), batch[MASK], meta["duration"], meta["segments"],
                          meta["video_id"])
    return search.compute()[0]


def measure(model, data: FeatureData, thresholds: list[float]) -> tuple[np.ndarray, np.ndarray, float]:
    """Test event mAP (%) and segment count per threshold (the last: chosen on validation,
    appended to ``thresholds`` by the caller), and the mean probability on positives."""
    metrics = [EventMAP(model.num_classes, threshold=t) for t in thresholds]
    on_positives = []
    with torch.no_grad():
        for batch in data.loader("test"):
            meta, batch = batch[META], to_model_layout(batch)
            probs = torch.sigmoid(model(batch).logits.float())
            on_positives.append(probs[batch[LABELS].bool() & batch[MASK][:, None, :]])
            for metric in metrics:
                metric.update(probs, batch[MASK], meta["duration"], meta["segments"], meta["video_id"])
    maps = np.array([100 * m.compute()["event_map"].item() for m in metrics])
    counts = np.array([sum(len(c) for c in m.det_class) for m in metrics])
    return maps, counts, float(torch.cat(on_positives).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the feature file the runs were evaluated on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("runs", nargs="+", help="NAME=run directory with {s} for the seed; the first is the reference")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = FeatureData(args.data, modalities=None, eval_batch_size=16)
    per_row, chosen = {}, {}
    for spec in args.runs:
        name, pattern = spec.split("=", 1)
        per_row[name], chosen[name] = [], []
        for s in args.seeds:
            model = load(Path(pattern.format(s=s)) / "best.ckpt")
            chosen[name].append(chosen_on_validation(model, data))
            per_row[name].append(measure(model, data, [*args.thresholds, chosen[name][-1]]))
    reference = next(iter(per_row))
    print("threshold " + " ".join(f"{t:>17g}" for t in args.thresholds) + f" {'val':>17}")
    for name, results in per_row.items():
        print(f"{'chosen':>9} {' ' * 18 * len(args.thresholds)}" + " ".join(f"{t:g}" for t in chosen[name]))
        maps = np.stack([r[0] for r in results])
        print(f"{name:>9} " + " ".join(f"{m:17.2f}" for m in maps.mean(0))
              + f"   mean probability on positives {statistics.fmean(r[2] for r in results):.3f}")
        print(f"{'segments':>9} " + " ".join(f"{c:17.0f}" for c in np.stack([r[1] for r in results]).mean(0)))
        if name != reference:
            diff = maps - np.stack([r[0] for r in per_row[reference]])
            cells = []
            for j in range(len(args.thresholds) + 1):
                lo_hi = t_interval(diff[:, j].tolist())
                cells.append(f"{diff[:, j].mean():+.2f}" + (f" [{lo_hi[0]:+.1f},{lo_hi[1]:+.1f}]" if lo_hi else ""))
            print(f"{'- ' + reference:>9} " + " ".join(f"{c:>17}" for c in cells))
            print(f"{'above':>9} " + " ".join(f"{int((diff[:, j] > 0).sum())}/{len(diff)}".rjust(17)
                                              for j in range(diff.shape[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
