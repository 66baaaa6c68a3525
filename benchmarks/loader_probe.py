"""Probe of the loader's time on a 64-video Charades-like fp32 file (batch 32), or with
``--shape tsu`` an 8-video TSU-like one (batch 8), or with ``--tiny`` the Charades-like
videos with 4-wide modalities (the copies cost almost nothing: what is left is Python);
``--dtype float16`` stores them in float16; ``--repeats`` interleaved repeats (15;
medians, ms per epoch, and MB/s over the raw read's):

* ``loader``: one epoch of ``FeatureDataModule.train_dataloader()``;
* ``batched reads``: ``FeatureDataset.__getitems__`` of the same batches (no DataLoader,
  no collate);
* ``per-item reads``: ``__getitem__`` per video (fresh small arrays, cache-warm);
* ``pread floor`` / ``mapped-copy floor``: the loader's copies of one epoch, prepared
  once, into two alternating sets of batch arrays with the padding rows zeroed, done by
  ``os.preadv`` or by ``np.copyto`` from a mapping of the file -- no Python per item;
* ``raw read``: ``readinto`` of the whole file, 1 MiB blocks into one reused buffer;
* ``loader @REV`` (``--against REV``, repeatable): the loader of an earlier commit, side
  by side -- its ``data/dataset.py`` (taken with ``git show``) over the same open file,
  with the same sampler and its own collate.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_probe.py [--shape tsu] [--tiny]
        [--dtype float16] [--against c5cf192] [--repeats 15]

(docs/performance.md quotes it.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

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


def loader_at(rev: str, loader: DataLoader, num_classes: int) -> DataLoader:
    """``loader`` as commit ``rev``'s ``data/dataset.py`` builds it: its ``FeatureDataset``
    over the same open file, videos and settings, the same sampler and batch size, its
    ``VideoCollate`` (the module's relative imports are pointed at today's ``batch`` and
    ``format`` modules, which that file must still fit)."""
    source = subprocess.run(["git", "show", f"{rev}:src/kd_detect/data/dataset.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    source = source.replace("from .batch import", "from kd_detect.data.batch import")
    source = source.replace("from .format import", "from kd_detect.data.format import")
    module = types.ModuleType(f"dataset_at_{rev}")
    exec(compile(source, f"{rev}:src/kd_detect/data/dataset.py", "exec"), module.__dict__)  # noqa: S102
    ds = loader.dataset
    old = module.FeatureDataset(ds.file, ds.video_ids, ds.modalities, max_steps=ds.max_steps, seed=ds.seed)
    return DataLoader(old, batch_size=loader.batch_size, sampler=loader.sampler,
                      collate_fn=module.VideoCollate(num_classes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("charades", "tsu"), default="charades")
    parser.add_argument("--tiny", action="store_true", help="4-wide modalities: the Python alone")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--against", action="append", default=[], metavar="REV",
                        help="also time the loader of commit REV, side by side (repeatable)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    shape, batch = (CHARADES.scaled(64), 32) if args.shape == "charades" else (TSU.scaled(8), 8)
    if args.tiny:
        shape = DataShape(shape.name, shape.videos, shape.steps, tuple((m, 4) for m, _ in shape.modalities),
                          shape.classes, shape.segments)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="kd_probe_") as tmp:
        data = write_data(shape, Path(tmp), dtypes=(args.dtype,))
        path = data.h5[args.dtype]
        dm = FeatureDataModule(str(path), batch_size=batch, val_subset="training", test_subset="training")
        loader, ds = dm.train_dataloader(), dm.dataset("train")
        batches = list(loader.batch_sampler)
        fns = {"loader": lambda: _drain(loader), "batched reads": lambda: [ds.__getitems__(k) for k in batches],
               "per-item reads": lambda: _items(ds, list(range(shape.videos))),
               "pread floor": pread_floor(loader, ds.file.h5.id.get_vfd_handle()),
               "mapped-copy floor": _floor_copier(loader), "raw read": _raw_reader([path])}
        for rev in args.against:
            old = loader_at(rev, loader, dm.num_classes)
            fns[f"loader @{rev}"] = lambda old=old: _drain(old)
        times = interleaved(fns, args.repeats, warmup=2)
        payload, size = payload_bytes(data, args.dtype), os.path.getsize(path)
        raw = size / statistics.median(times["raw read"])
        print(f"{shape.name}-like, {shape.videos} videos, {args.dtype}, modalities {shape.modalities}, batch {batch}")
        for key, ts in times.items():
            t = statistics.median(ts)
            rate = (size if key == "raw read" else payload) / t
            print(f"{key:18s} {t * 1000:6.2f} ms per epoch   {rate / 2**20:6.0f} MB/s   {rate / raw:.2f} of raw")
        dm.teardown("fit")


if __name__ == "__main__":
    main()
