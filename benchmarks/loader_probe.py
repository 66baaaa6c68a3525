"""Probe of the loader's time on a 64-video Charades-like fp32 file (batch 32), or with
``--shape tsu`` an 8-video TSU-like one (batch 8), or with ``--tiny`` the Charades-like
videos with 4-wide modalities (the copies cost almost nothing: what is left is Python);
15 interleaved repeats (medians, ms per epoch, and MB/s over the raw read's):

* ``loader``: one epoch of ``FeatureDataModule.train_dataloader()``;
* ``batched reads``: ``FeatureDataset.__getitems__`` of the same batches (no DataLoader,
  no collate);
* ``per-item reads``: ``__getitem__`` per video (fresh small arrays, cache-warm);
* ``pread floor`` / ``mapped-copy floor``: the loader's copies of one epoch, prepared
  once, into two alternating sets of batch arrays with the padding rows zeroed, done by
  ``os.preadv`` or by ``np.copyto`` from a mapping of the file -- no Python per item;
* ``raw read``: ``readinto`` of the whole file, 1 MiB blocks into one reused buffer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_probe.py [--shape tsu] [--tiny]

(docs/performance.md quotes it.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import torch  # noqa: E402

from benchmarks.common import CHARADES, TSU, DataShape, interleaved, write_data  # noqa: E402
from benchmarks.loading import _drain, _floor_copier, _items, _raw_reader, payload_bytes  # noqa: E402
from kd_detect.data.datamodule import FeatureDataModule  # noqa: E402


def pread_floor(loader, fd: int):
    """The copies of :func:`benchmarks.loading._floor_copier` done with ``os.preadv``
    (same destinations, same file offsets, same zeroing)."""
    floor = _floor_copier(loader)
    base = loader.dataset._mapped().__array_interface__["data"][0]
    sets = [([(dst, src.__array_interface__["data"][0] - base) for dst, src in copies], zeros)
            for copies, zeros in floor.sets]

    def run() -> int:
        for reads, zeros in sets:
            for dst, pos in reads:
                os.preadv(fd, [dst], pos)
            for z in zeros:
                z[...] = 0
        return len(sets)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("charades", "tsu"), default="charades")
    parser.add_argument("--tiny", action="store_true", help="4-wide modalities: the Python alone")
    args = parser.parse_args(argv)
    shape, batch = (CHARADES.scaled(64), 32) if args.shape == "charades" else (TSU.scaled(8), 8)
    if args.tiny:
        shape = DataShape(shape.name, shape.videos, shape.steps, tuple((m, 4) for m, _ in shape.modalities),
                          shape.classes, shape.segments)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="kd_probe_") as tmp:
        data = write_data(shape, Path(tmp), dtypes=("float32",))
        path = data.h5["float32"]
        dm = FeatureDataModule(str(path), batch_size=batch, val_subset="training", test_subset="training")
        loader, ds = dm.train_dataloader(), dm.dataset("train")
        batches = list(loader.batch_sampler)
        fns = {"loader": lambda: _drain(loader), "batched reads": lambda: [ds.__getitems__(k) for k in batches],
               "per-item reads": lambda: _items(ds, list(range(shape.videos))),
               "pread floor": pread_floor(loader, ds.file.h5.id.get_vfd_handle()),
               "mapped-copy floor": _floor_copier(loader), "raw read": _raw_reader([path])}
        times = interleaved(fns, 15, warmup=2)
        payload, size = payload_bytes(data, "float32"), os.path.getsize(path)
        raw = size / statistics.median(times["raw read"])
        print(f"{shape.name}-like, {shape.videos} videos, modalities {shape.modalities}, batch {batch}")
        for key, ts in times.items():
            t = statistics.median(ts)
            rate = (size if key == "raw read" else payload) / t
            print(f"{key:18s} {t * 1000:6.2f} ms per epoch   {rate / 2**20:6.0f} MB/s   {rate / raw:.2f} of raw")
        dm.teardown("fit")


if __name__ == "__main__":
    main()
