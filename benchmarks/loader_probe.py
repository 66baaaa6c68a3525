"""Probe of the loader's time on a 64-video Charades-like fp32 file: one epoch of the
DataLoader, of ``FeatureDataset.__getitems__`` (the batched reads), of per-item
``__getitem__`` and of a raw ``readinto`` of the file, 15 interleaved repeats (medians).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_probe.py

(docs/performance.md, "Reuse released batch memory", quotes it; prefix with
``MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TRIM_THRESHOLD_=4000000000`` to keep glibc
from returning batch memory to the kernel.)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import torch  # noqa: E402

from benchmarks.common import CHARADES, interleaved, write_data  # noqa: E402
from benchmarks.loading import _drain, _items, _raw_reader  # noqa: E402
from kd_detect.data.datamodule import FeatureDataModule  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="kd_probe_") as tmp:
        data = write_data(CHARADES.scaled(64), Path(tmp), dtypes=("float32",))
        dm = FeatureDataModule(str(data.h5["float32"]), batch_size=32, val_subset="training",
                               test_subset="training")
        loader, ds = dm.train_dataloader(), dm.dataset("train")
        order = list(range(64))
        batches = [order[:32], order[32:]]
        fns = {"loader": lambda: _drain(loader), "batched reads": lambda: [ds.__getitems__(k) for k in batches],
               "per-item reads": lambda: _items(ds, order), "raw read": _raw_reader([data.h5["float32"]])}
        times = interleaved(fns, 15, warmup=2)
        for key, ts in times.items():
            print(f"{key}: {statistics.median(ts) * 1000:.1f} ms per epoch")
        dm.teardown("fit")


if __name__ == "__main__":
    main()
