"""Pilot (not a package feature): does the student gain from cross-fitted teacher targets?

The teacher fits the noisy training labels almost perfectly (on the synthetic benchmark,
seed 0: 91.5 frame mAP on its own training videos against 62.2 on test), so on the very
videos the student distils from, the teacher's outputs partly repeat those labels. Cross-
fitting removes that: the training videos are split into K folds, teacher k is trained
with fold k held out, and each training video's targets come from the one teacher that
never saw it ("out of fold"). The student then reads the merged targets from a teacher
cache (``teacher_caches``), with the same losses and recipe as ``synthetic_kd``.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/crossfit_teachers.py \
        --folds 4 --seeds 0 1 2 [--data data/synthetic.h5] [--out runs/crossfit4] \
        [--reference runs/compare]

Writes ``data/<stem>_cf<K>_<k>.h5`` (the feature file with fold k's training videos marked
``heldout``: the teacher's DataModule trains on ``training`` only), and per seed
``<out>/seed<s>/teacher_<k>/``, ``cache_<k>.h5``, ``oof_targets.h5`` and ``kd_oof/``. Then
prints the student paired by seed with ``synthetic_kd`` and ``synthetic_rgb`` of
``--reference`` (a ``make compare`` directory), on test and on validation. Every step is
skipped when its output exists. Measured figures: README, Results.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py

from kd_detect.data.format import FeatureFile
from kd_detect.io import atomic_write
from kd_detect.lab.compare import METRIC, SELECTION, t_interval
from kd_detect.runs import RunDir

KD = str(Path(sys.executable).with_name("kd-detect"))
COMMON = ["--test_after_fit=true", "--trainer.enable_progress_bar=false", "--trainer.logger=kd_detect.loggers.CSVLogger"]


def folds_of(data: Path, k: int, seed: int = 1234) -> list[list[str]]:
    """The training videos of ``data`` in ``k`` folds (a fixed shuffle, round-robin)."""
    features = FeatureFile(data)  # validates the file and names what is wrong
    try:
        train = sorted(features.videos_in("training"))
    finally:
        features.close()
    random.Random(seed).shuffle(train)
    return [sorted(train[i::k]) for i in range(k)]


def fold_file(data: Path, folds: list[list[str]], i: int) -> Path:
    out = data.with_name(f"{data.stem}_cf{len(folds)}_{i}.h5")
    if not out.is_file():
        with atomic_write(out) as tmp:
            shutil.copyfile(data, tmp)
            with h5py.File(tmp, "r+") as h5:
                for v in folds[i]:
                    h5["videos"][v].attrs["subset"] = "heldout"
    return out


def fit(args: list[str], out: Path, log: Path) -> None:
    if (out / "metrics.json").is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [KD, "fit", *args, f"--trainer.default_root_dir={out}", *COMMON]
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    print(f"  done: {out}: {METRIC} = {RunDir(out).metrics()[METRIC]:.4f}", flush=True)


def merge_out_of_fold(data: Path, seed_dir: Path, folds: list[list[str]]) -> Path:
    """One teacher cache in which each training video's targets come from the teacher that
    did not train on it (validation and test videos: fold 0's teacher; the student only
    distils on training videos)."""
    out = seed_dir / "oof_targets.h5"
    if out.is_file():
        return out
    caches = []
    for i in range(len(folds)):
        cache = seed_dir / f"cache_{i}.h5"
        if not cache.is_file():
            subprocess.run([KD, "cache-teacher", "--ckpt", str(seed_dir / f"teacher_{i}" / "best.ckpt"),
                            "--data", str(data), "--out", str(cache)], check=True, capture_output=True)
        caches.append(h5py.File(cache, "r"))
    owner = {v: i for i, vs in enumerate(folds) for v in vs}
    with atomic_write(out) as tmp, h5py.File(tmp, "w") as h5:
        for key, value in caches[0].attrs.items():
            h5.attrs[key] = value
        h5.attrs["teacher_sha256"] = f"crossfit{len(folds)}-out-of-fold"
        group = h5.create_group("videos")
        for v in caches[0]["videos"]:
            src = caches[owner.get(v, 0)]
            src.copy(src["videos"][v], group, name=v)
    for cache in caches:
        cache.close()
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    d = [100 * (a[s] - b[s]) for s in sorted(a) if s in b]
    if not d:
        return "no common seed"
    ci = t_interval(d)
    text = f"{statistics.fmean(d):+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
    return f"{text}, above on {sum(x > 0 for x in d)}/{len(d)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default="data/synthetic.h5")
    parser.add_argument("--out", default=None, help="default runs/crossfit<K>")
    parser.add_argument("--reference", default="runs/compare", help="make compare directory to pair with")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out or f"runs/crossfit{args.folds}")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "crossfit.log"
    folds = folds_of(data, args.folds)
    files = [fold_file(data, folds, i) for i in range(args.folds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: fit(["--config", "experiments/synthetic_teacher.yaml", f"--seed_everything={job[0]}",
                                       f"--data.path={files[job[1]]}"], out / f"seed{job[0]}" / f"teacher_{job[1]}", log),
                      [(s, i) for s in args.seeds for i in range(args.folds)]))

    def student(seed: int) -> None:
        targets = merge_out_of_fold(data, out / f"seed{seed}", folds)
        fit(["--config", "experiments/synthetic_kd.yaml", f"--seed_everything={seed}", f"--data.path={data}",
             "--model.init_args.teachers=null", f"--model.init_args.teacher_caches.teacher={targets}",
             "--data.modalities=[rgb]"], out / f"seed{seed}" / "kd_oof", log)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(student, args.seeds))
    ref = Path(args.reference)

    def figures(run: str, split: str) -> dict[int, float]:
        values = {}
        for s in args.seeds:
            r = RunDir(run.format(s=s))
            values[s] = (r.metrics() or {}).get(METRIC) if split == "test" else r.selection_score(SELECTION)
        return {s: v for s, v in values.items() if v is not None}

    for split in ("test", "validation"):
        oof = figures(str(out / "seed{s}" / "kd_oof"), split)
        print(f"{split}: out-of-fold − ours {paired(oof, figures(str(ref / 'seed{s}' / 'synthetic_kd'), split))}; "
              f"out-of-fold − RGB-only {paired(oof, figures(str(ref / 'seed{s}' / 'synthetic_rgb'), split))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
