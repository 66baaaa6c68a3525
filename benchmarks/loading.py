"""Data loading: ``FeatureDataModule`` on HDF5 vs one ``.npy`` per video and modality,
and the raw read bandwidth of the same bytes (the ceiling).

Variants (same videos, batch size, workers and collate; page cache warm for all):

* ``h5_<dtype>``: ``FeatureDataModule(...).train_dataloader()`` over the file, lazy reads
  (host-layout batches: the stored rows and dtype, what goes over the bus);
* ``h5_model_<dtype>``: the same plus :func:`~kd_detect.data.batch.to_model_layout` on the
  bench device (the widening ``(B, D, T)`` copy; on a CPU-only machine it runs on the CPU,
  so this is the end-to-end cost of a batch there);
* ``h5_preload_<dtype>``: the same with ``preload=True`` (RAM, collate only);
* ``npy_<dtype>``: a plain ``Dataset`` doing ``np.load`` per video and modality, labels
  built in memory at init (as earlier action-detection loaders do), the same collate;
* ``raw_h5_<dtype>`` / ``raw_npy_<dtype>``: ``readinto`` of the files' bytes, nothing else
  (1 MiB blocks into one reused buffer, which stays in the CPU cache);
* ``floor_h5_<dtype>``: the loader's own copies of one epoch -- the same rows from the
  mapped file into batch arrays of the same shapes, padding zeroed, two sets of arrays
  alternating (the consumer holds one batch while the next is read) -- precomputed, with
  no Python work per item: what any loader delivering padded batches must at least do;
* ``h5_items_<dtype>`` / ``npy_items_<dtype>``: the datasets' items alone (no collate), to
  split the loader's time into reading and batching.

:func:`bench_workers` times the float16 loader with 0, 1, 2 worker processes.

MB/s counts the stored feature bytes delivered (the file bytes for the raw variants).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from benchmarks.common import GeneratedData, interleaved, median, spread


class NpyDataset(Dataset):
    """The common alternative: ``<root>/<video>_<modality>.npy`` read with ``np.load`` per
    item; labels (multi-hot from segments) and segments held in memory from init. Items
    have the layout of :class:`~kd_detect.data.dataset.FeatureDataset` so the same collate
    applies."""

    def __init__(self, root: Path, h5_path: Path, modalities: list[str]) -> None:
        from kd_detect.data.format import FeatureFile, labels_from_segments

        ff = FeatureFile(h5_path)  # only for the annotations: ids, durations, segments
        self.root, self.modalities = Path(root), list(modalities)
        self.video_ids = list(ff.video_ids)
        self.durations = dict(ff.durations)
        self.lengths = dict(ff.lengths)
        self.segments = {v: ff.segments(v) for v in self.video_ids}
        self.labels = {
            v: labels_from_segments(self.segments[v], self.lengths[v], self.durations[v], ff.num_classes)
            for v in self.video_ids
        }
        ff.close()

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid = self.video_ids[index]
        feats = {m: np.load(self.root / f"{vid}_{m}.npy") for m in self.modalities}
        return {
            "features": feats, "labels": self.labels[vid], "video_id": vid, "duration": self.durations[vid],
            "length": self.lengths[vid], "offset": 0, "segments": self.segments[vid],
        }


def _drain(loader: DataLoader, convert: Any = None) -> int:
    """Every batch of one epoch; ``convert`` (e.g. ``to_model_layout``) applied to each. A
    sampler with ``set_epoch`` (the training loader's) is moved on to the next epoch first, as
    Lightning does, so each timed epoch has its own order and crops, as in training."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        loader.drained_epochs = getattr(loader, "drained_epochs", 0) + 1
        sampler.set_epoch(loader.drained_epochs - 1)
    n = 0
    for batch in loader:
        if convert is not None:
            batch = convert(batch)
        n += len(batch["meta"]["video_id"])
    return n


def _to_device(device: str) -> Any:
    """``batch -> to_model_layout(batch, device)``, waiting for the device's copy."""
    from kd_detect.data.batch import to_model_layout

    cuda = torch.device(device).type == "cuda"

    def convert(batch: dict) -> dict:
        out = to_model_layout(batch, device)
        if cuda:
            torch.cuda.synchronize()
        return out

    return convert


def _items(dataset: Dataset, order: list[int]) -> int:
    """Read every item once, dropping each (memory is reused as in a loader)."""
    for i in order:
        dataset[i]
    return len(order)


def _raw_reader(paths: list[Path], block: int = 1 << 20):
    """``readinto`` every file (1 MiB blocks, one reused buffer): the bytes, nothing else."""
    buf = bytearray(block)
    view = memoryview(buf)

    def run() -> int:
        total = 0
        for p in paths:
            with open(p, "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    total += n
        return total

    return run


def _floor_copier(loader: DataLoader):
    """The bare copies of one epoch of ``loader`` (see the module docstring), into memory
    of the loader's kind (:func:`~kd_detect.data.dataset.batch_memory`): ``(dst, src)``
    pairs of ``uint8`` arrays and the padding rows, prepared once; the returned function
    only runs ``np.copyto`` and the zeroing over them. Its ``batches`` attribute holds the
    destination arrays per batch (field order of the dataset), ``sets`` the two sets of
    ``(copies, zeros)`` (for tests and benchmarks/loader_probe.py)."""
    from kd_detect.data.dataset import batch_memory

    dataset = loader.dataset
    sets: list[tuple[list, list]] = [([], []), ([], [])]
    batches: list[list[np.ndarray]] = []
    for n_batch, keys in enumerate(loader.batch_sampler):
        windows = [dataset._window(k) for k in keys]
        sources = [dataset._direct_rows(w[0]) for w in windows]
        if any(s is None for s in sources):
            raise RuntimeError("floor: the bench file is not read directly (not contiguous?)")
        spans = [(offset, length if stop is None else stop) for _, _, length, offset, stop in windows]
        steps = max(b - a for a, b in spans)
        copies, zeros = sets[n_batch % 2]
        batches.append([])
        for f, (width, dtype) in enumerate(dataset._spec):
            # the loader's kind of memory (batch_memory), allocated and faulted in once
            nbytes = len(keys) * steps * width * dtype.itemsize
            buf = batch_memory(nbytes)[:nbytes].view(dtype).reshape(len(keys), steps, width)
            buf[...] = 1
            batches[-1].append(buf)
            for b, (start, stop) in enumerate(spans):
                copies.append((buf[b, :stop - start].view(np.uint8), sources[b][f][start:stop]))
                zeros.append(buf[b, stop - start:])

    def run() -> int:
        for copies, zeros in sets:
            for dst, src in copies:
                np.copyto(dst, src)
            for z in zeros:
                z[...] = 0
        return len(sets)

    run.batches = batches  # type: ignore[attr-defined]
    run.sets = sets  # type: ignore[attr-defined]
    return run


def payload_bytes(data: GeneratedData, dtype: str) -> int:
    """Stored feature bytes of all videos in ``dtype``."""
    from kd_detect.data.format import FeatureFile

    ff = FeatureFile(data.h5[dtype])
    item = np.dtype(dtype).itemsize
    dims = sum(d for _, d in data.shape.modalities)
    return sum(ff.lengths[v] for v in ff.video_ids) * dims * item


def bench_loading(data: GeneratedData, batch_size: int, workers: int, repeats: int,
                  dtypes: tuple[str, ...] = ("float32", "float16"), preload: bool = True,
                  device: str = "cpu") -> dict[str, Any]:
    """Time one epoch of every variant (interleaved, median of ``repeats``); returns
    per-variant videos/s and MB/s plus the ratios."""
    from kd_detect.data.datamodule import FeatureDataModule
    from kd_detect.data.dataset import VideoCollate

    mods = [m for m, _ in data.shape.modalities]
    n_videos = data.shape.videos
    fns, bytes_of, keep = {}, {}, []
    for dt in dtypes:
        common = dict(batch_size=batch_size, num_workers=workers, val_subset="training", test_subset="training")
        dm = FeatureDataModule(str(data.h5[dt]), modalities=mods, **common)
        keep.append(dm)
        loader = dm.train_dataloader()
        fns[f"h5_{dt}"] = lambda loader=loader: _drain(loader)
        fns[f"h5_model_{dt}"] = lambda loader=loader: _drain(loader, _to_device(device))
        if preload:
            dmp = FeatureDataModule(str(data.h5[dt]), modalities=mods, preload=True, **common)
            keep.append(dmp)
            loader_p = dmp.train_dataloader()
            fns[f"h5_preload_{dt}"] = lambda loader=loader_p: _drain(loader)
        ds = NpyDataset(data.npy[dt], data.h5[dt], mods)
        loader_n = DataLoader(
            ds, batch_size=batch_size, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(0)),
            collate_fn=VideoCollate(len(data.classes)), num_workers=workers, persistent_workers=workers > 0,
        )
        fns[f"npy_{dt}"] = lambda loader=loader_n: _drain(loader)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
        h5_ds = dm.dataset("train")
        fns[f"h5_items_{dt}"] = lambda ds=h5_ds, order=order: _items(ds, order)
        fns[f"npy_items_{dt}"] = lambda ds=ds, order=order: _items(ds, order)
        fns[f"raw_h5_{dt}"] = _raw_reader([data.h5[dt]])
        fns[f"floor_h5_{dt}"] = _floor_copier(loader)
        npy_files = sorted(data.npy[dt].iterdir())
        fns[f"raw_npy_{dt}"] = _raw_reader(npy_files)
        payload = payload_bytes(data, dt)
        for key in (f"h5_{dt}", f"h5_model_{dt}", f"h5_preload_{dt}", f"npy_{dt}", f"h5_items_{dt}",
                    f"npy_items_{dt}", f"floor_h5_{dt}"):
            bytes_of[key] = payload
        bytes_of[f"raw_h5_{dt}"] = os.path.getsize(data.h5[dt])
        bytes_of[f"raw_npy_{dt}"] = sum(os.path.getsize(p) for p in npy_files)
    times = interleaved(fns, repeats, warmup=1)  # the warm-up round also warms the page cache
    variants = {}
    for key, ts in times.items():
        t = median(ts)
        variants[key] = {
            "seconds_per_epoch": t,
            "videos_per_s": n_videos / t,
            "mb_per_s": bytes_of[key] / t / 2**20,
            "mb": bytes_of[key] / 2**20,
            "noise": spread(ts),
        }
    out: dict[str, Any] = {
        "dataset": data.shape.name, "videos": n_videos, "batch_size": batch_size, "workers": workers,
        "device": device,
        "repeats": repeats, "variants": variants,
    }
    for dt in dtypes:
        tag = "" if dt == "float32" else "_fp16"
        v = variants
        out[f"h5_over_npy{tag}"] = v[f"h5_{dt}"]["videos_per_s"] / v[f"npy_{dt}"]["videos_per_s"]
        out[f"loader_over_raw{tag}"] = v[f"h5_{dt}"]["mb_per_s"] / v[f"raw_h5_{dt}"]["mb_per_s"]
        # the floor: the loader's copies alone, and how close the loader comes to it
        out[f"floor_over_raw{tag}"] = v[f"floor_h5_{dt}"]["mb_per_s"] / v[f"raw_h5_{dt}"]["mb_per_s"]
        out[f"loader_over_floor{tag}"] = v[f"h5_{dt}"]["mb_per_s"] / v[f"floor_h5_{dt}"]["mb_per_s"]
        out[f"npy_loader_over_raw{tag}"] = v[f"npy_{dt}"]["mb_per_s"] / v[f"raw_npy_{dt}"]["mb_per_s"]
        out[f"h5_read_over_npy_read{tag}"] = v[f"h5_items_{dt}"]["videos_per_s"] / v[f"npy_items_{dt}"]["videos_per_s"]
        # end to end on this machine: the loader plus the model-layout conversion (on `device`)
        out[f"h5_model_over_npy{tag}"] = v[f"h5_model_{dt}"]["videos_per_s"] / v[f"npy_{dt}"]["videos_per_s"]
        out[f"model_layout_share{tag}"] = 1.0 - v[f"h5_{dt}"]["seconds_per_epoch"] / v[f"h5_model_{dt}"]["seconds_per_epoch"]
        out[f"h5_read_over_raw{tag}"] = v[f"h5_items_{dt}"]["mb_per_s"] / v[f"raw_h5_{dt}"]["mb_per_s"]
        # share of the loader's time spent batching (collate: pad + transpose + cast)
        out[f"collate_share{tag}"] = 1.0 - v[f"h5_items_{dt}"]["seconds_per_epoch"] / v[f"h5_{dt}"]["seconds_per_epoch"]
        if preload:
            out[f"preload_over_lazy{tag}"] = v[f"h5_preload_{dt}"]["videos_per_s"] / v[f"h5_{dt}"]["videos_per_s"]
    if "float16" in dtypes and "float32" in dtypes:
        out["h5_fp16_over_h5_fp32"] = variants["h5_float16"]["videos_per_s"] / variants["h5_float32"]["videos_per_s"]
        out["h5_fp16_over_npy_fp32"] = variants["h5_float16"]["videos_per_s"] / variants["npy_float32"]["videos_per_s"]
    for dm in keep:
        dm.teardown("fit")
    return out


class _Transport(Dataset):
    """Items are indices; with :class:`_FreshBatches` as collate a worker returns batches of
    given shapes without reading anything (the cost of handing batches across processes)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class _FreshBatches:
    """Collate: new tensors of the shapes and dtypes of ``template`` (what a worker's
    batch is); ``reuse=True`` returns the same tensors every time instead (after the first
    hand-over they live in shared memory and only a handle crosses -- unsafe for real
    batches, whose memory the worker cannot know to be released: shown for comparison)."""

    def __init__(self, template: dict[str, torch.Tensor], reuse: bool = False) -> None:
        self.shapes = {k: (tuple(v.shape), v.dtype) for k, v in template.items()}
        self.reuse, self.kept = reuse, None

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        if self.reuse and self.kept is not None:
            return self.kept
        batch = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in self.shapes.items()}
        if self.reuse:
            self.kept = {k: v.share_memory_() for k, v in batch.items()}
            return self.kept
        return batch


def bench_workers(data: GeneratedData, batch_size: int, repeats: int, counts: tuple[int, ...] = (0, 1, 2),
                  dtype: str = "float16") -> dict[str, Any]:
    """One epoch of the HDF5 loader with each number of worker processes (persistent,
    interleaved); ``videos_per_s`` per count and the speed-up over 0 workers. Next to them,
    the hand-over alone (``transport_videos_per_s``): one worker returning batches of the
    loader's shapes without reading (``fresh``: new tensors per batch, as the loader's
    workers must; ``reused``: the same shared tensors each time) and the same in-process."""
    from kd_detect.data.datamodule import FeatureDataModule

    fns, keep = {}, []
    for n in counts:
        dm = FeatureDataModule(str(data.h5[dtype]), batch_size=batch_size, num_workers=n,
                               val_subset="training", test_subset="training")
        keep.append(dm)
        fns[str(n)] = lambda loader=dm.train_dataloader(): _drain(loader)  # noqa: B008 (bound once, on purpose)
    template = {k: v for k, v in next(iter(keep[0].train_dataloader())).items() if isinstance(v, torch.Tensor)}
    transports = {"fresh_0": (0, False), "fresh_1": (1, False), "reused_1": (1, True)}
    for key, (n, reuse) in transports.items():
        collate = _FreshBatches(template, reuse=reuse)
        loader = DataLoader(_Transport(data.shape.videos), batch_size=batch_size, collate_fn=collate,
                            num_workers=n, persistent_workers=n > 0)
        fns[f"transport_{key}"] = lambda loader=loader: sum(1 for _ in loader)
    times = interleaved(fns, repeats, warmup=1)
    vps = {k: data.shape.videos / median(ts) for k, ts in times.items()}
    for dm in keep:
        dm.teardown("fit")
    loaders = {k: v for k, v in vps.items() if not k.startswith("transport_")}
    return {"dtype": dtype, "batch_size": batch_size, "cpus": os.cpu_count(), "videos_per_s": loaders,
            "speedup_over_0": {k: v / loaders[str(counts[0])] for k, v in loaders.items()},
            "transport_videos_per_s": {k.removeprefix("transport_"): v for k, v in vps.items()
                                       if k.startswith("transport_")},
            "noise": {k: spread(ts) for k, ts in times.items()}}
