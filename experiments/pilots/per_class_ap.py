"""Pilot (a measurement, not a package feature): per-class frame AP of several runs, averaged
over seeds, on the validation and test videos, with each class's instance count.

A difference of mean AP between two rows can be one class or all of them, and a split with
few instances per class can rank rows differently from another. This prints, per split, the
instances of each class (and, first, its training instances) and every row's per-class AP
(mean over the seeds whose checkpoint exists), then its mean. With ``--probe`` the test split
also shows the linear probe of RGB (``kd_detect.lab.probe``, deterministic) as a row::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/per_class_ap.py --data data/synthetic.h5 \\
        rgb=runs/v3/seed{s}/synthetic_rgb ours=runs/v3/seed{s}/synthetic_kd \\
        unlabelled=runs/unl/seed{s}/ablations/synthetic_kd_unlabelled --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/per_class_ap.py --data data/synthetic.h5 \\
        --probe rgb=runs/evt/seed{s}/synthetic_rgb --seeds 0 1 2 3 4 5 6 7 8 9

With ``--groups 16 30`` the classes are also grouped by training instances (at most 16, 17 to
30, more) and, for each ``--paired A-B``, the test split gets per group the mean over seeds
of A's group-mean AP minus B's, its 95 % t interval and on how many seeds it is positive::

    ... rgb=runs/evt/seed{s}/synthetic_rgb ours=runs/evt/seed{s}/synthetic_kd \
        teacher=runs/evt/seed{s}/synthetic_teacher --seeds 0 1 2 3 4 5 6 7 8 9 \
        --groups 16 30 --paired ours-rgb teacher-rgb

Measured figures: docs/results.md, "Distilling on videos without labels" and "Why PDAN stays
below a linear probe of its own input".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from kd_detect.data.batch import LABELS, MASK, to_model_layout
from kd_detect.data.feature_data import FeatureData
from kd_detect.lab.compare import paired_difference
from kd_detect.lab.probe import probe
from kd_detect.metrics import FrameMAP
from kd_detect.modules.loading import checkpoint_class, load_detector, read_checkpoint
from kd_detect.modules.student import StudentModule


def load(path: Path):
    """A checkpoint as its module, in eval mode; a student without its teachers."""
    cls = checkpoint_class(read_checkpoint(path), path)
    extra = {"teachers": {}, "teacher_caches": {}} if issubclass(cls, StudentModule) else {}
    return load_detector(path, **extra)


def per_class_ap(model, data: FeatureData, split: str) -> np.ndarray:
    metric = FrameMAP(model.num_classes)
    with torch.no_grad():
        for batch in map(to_model_layout, data.loader(split)):
            metric.update(torch.sigmoid(model(batch).logits.float()), batch[LABELS], batch[MASK])
    return metric.compute()["ap"].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the feature file the runs were evaluated on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--probe", action="store_true", help="add the linear probe of RGB as a row (test only)")
    parser.add_argument("--groups", type=int, nargs="*", default=[],
                        help="upper bounds of training instances that group the classes (test split)")
    parser.add_argument("--paired", nargs="*", default=[],
                        help="A-B: per group, A's mean AP minus B's, paired by seed (give it after the runs)")
    parser.add_argument("runs", nargs="+", help="NAME=run directory with {s} for the seed")
    args = parser.parse_args(argv)
    names = [spec.split("=", 1)[0] for spec in args.runs]
    for pair in args.paired:
        a, _, b = pair.partition("-")
        if a not in names or b not in names:
            parser.error(f"--paired {pair}: expected A-B with A and B among the run names {names}")
    if args.paired and not args.groups:
        parser.error("--paired needs --groups (the differences are per group of classes)")
    torch.set_num_threads(1)
    data = FeatureData(args.data, modalities=None, eval_batch_size=16)
    ff = data.feature_file
    probe_ap = 100 * probe(args.data, ["rgb"]).test_ap if args.probe else None
    per_seed: dict[str, dict[int, np.ndarray]] = {}  # test AP per run name and seed
    for split in ("train", "val", "test"):
        counts = np.zeros(ff.num_classes, dtype=int)
        for vid in data.dataset(split).video_ids:
            for row in ff.segments(vid):
                counts[int(row[0])] += 1
        print(f"{split}: instances per class {counts.tolist()}")
        if split == "train":
            train_counts = counts
            continue
        if split == "test" and probe_ap is not None:
            print(f"  {'probe':>12} (ridge)   " + " ".join(f"{x:5.1f}" for x in probe_ap)
                  + f"  mean {np.nanmean(probe_ap):.2f}")
        for spec in args.runs:
            name, pattern = spec.split("=", 1)
            aps = {s: 100 * per_class_ap(load(Path(pattern.format(s=s)) / "best.ckpt"), data, split)
                   for s in args.seeds if (Path(pattern.format(s=s)) / "best.ckpt").is_file()}
            mean = np.nanmean(np.stack(list(aps.values())), 0)
            print(f"  {name:>12} ({len(aps)} seeds) " + " ".join(f"{x:5.1f}" for x in mean)
                  + f"  mean {np.nanmean(mean):.2f}")
            if split == "test":
                per_seed[name] = aps
    if args.groups:
        print_groups(train_counts, sorted(args.groups), per_seed, args.paired, probe_ap)
    return 0


def print_groups(counts: np.ndarray, bounds: list[int], per_seed: dict, paired: list[str], probe_ap) -> None:
    """Test AP per group of classes (by training instances): each run's mean, the probe's, and
    each ``A-B`` difference paired by seed."""
    edges = [-1, *bounds, int(counts.max())]
    for lo, hi in zip(edges[:-1], edges[1:]):
        members = np.flatnonzero((counts > lo) & (counts <= hi))
        if not len(members):
            continue
        head = f"classes with {lo + 1}-{hi} training instances ({', '.join(f'c{c:02d}' for c in members)}):"
        means = {name: {s: float(np.nanmean(ap[members])) for s, ap in aps.items()} for name, aps in per_seed.items()}
        cells = [f"{name} {np.mean(list(m.values())):.2f}" for name, m in means.items()]
        if probe_ap is not None:
            cells.append(f"probe {np.nanmean(probe_ap[members]):.2f}")
        print(head, ", ".join(cells))
        for pair in paired:
            a, _, b = pair.partition("-")
            d = paired_difference(means[a], means[b])
            ci = f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d["ci95"] else "(one seed)"
            print(f"    {a} - {b}: {d['mean']:+.2f} {ci} {d['above']}/{d['runs']}")


if __name__ == "__main__":
    raise SystemExit(main())
