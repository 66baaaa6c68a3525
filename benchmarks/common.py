"""Shared helpers of the benchmark: interleaved timing, generated data of realistic
shape, peak-memory probes and atomic report writing.

Every figure that matters is a *ratio* of variants timed side by side in one process:
the variants run interleaved (A, B, C, A, B, C, ...) and each keeps the median of its
repeats, so a slow spell of the (shared, noisy) machine hits all of them alike.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kd_detect.io import atomic_write


# --------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                sync: Callable[[], Any] | None = None) -> dict[str, list[float]]:
    """Seconds per call of every function, run round-robin ``repeats`` times after
    ``warmup`` untimed rounds; ``sync`` (e.g. ``torch.cuda.synchronize``) is called before
    each timer stop, so asynchronous device work is counted."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[key].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> float:
    """Relative half-range of the middle half (a robust noise figure), 0 for < 4 values."""
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return float((q[2] - q[0]) / 2 / max(statistics.median(values), 1e-12))


def set_threads(threads: int) -> None:
    """One setting for torch, OpenMP and BLAS (children inherit the environment)."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataShape:
    """A generated dataset: ``videos`` videos of ``steps`` steps (uniform in the range),
    one ``(T, dim)`` array per modality, ``classes`` classes, ``segments`` per video."""

    name: str
    videos: int
    steps: tuple[int, int]
    modalities: tuple[tuple[str, int], ...]
    classes: int
    segments: int = 6
    steps_per_second: float = 3.0  # I3D at 24 fps, one feature every 8 frames

    def scaled(self, videos: int) -> "DataShape":
        return DataShape(self.name, videos, self.steps, self.modalities, self.classes, self.segments,
                         self.steps_per_second)


CHARADES = DataShape("charades", 256, (60, 120), (("rgb", 1024), ("flow", 1024)), 157)
TSU = DataShape("tsu", 32, (1500, 2000), (("rgb", 1024), ("pose", 512)), 51, segments=30)


def generate_videos(shape: DataShape, seed: int = 0):
    """Yield :class:`~kd_detect.data.format.VideoRecord` s of ``shape`` (fp32 features)."""
    from kd_detect.data.format import VideoRecord

    rng = np.random.default_rng(seed)
    for i in range(shape.videos):
        steps = int(rng.integers(shape.steps[0], shape.steps[1] + 1))
        duration = steps / shape.steps_per_second
        feats = {m: rng.standard_normal((steps, d), dtype=np.float32) for m, d in shape.modalities}
        starts = rng.uniform(0, duration * 0.9, shape.segments)
        ends = np.minimum(starts + duration * rng.uniform(0.03, 0.33, shape.segments), duration)
        segs = np.stack([rng.integers(0, shape.classes, shape.segments), starts, ends], 1).astype(np.float64)
        yield VideoRecord(f"{shape.name}_{i:05d}", "training", duration, feats, segs)


@dataclass
class GeneratedData:
    """Paths of one generated dataset: an HDF5 file per dtype and the same videos as
    one ``.npy`` per video and modality (the layout of earlier action-detection code)."""

    shape: DataShape
    h5: dict[str, Path]
    npy: dict[str, Path]
    classes: list[str]


def write_data(shape: DataShape, root: Path, dtypes: tuple[str, ...] = ("float32", "float16"),
               seed: int = 0) -> GeneratedData:
    """Write ``shape`` as HDF5 (format v1) and as per-video ``.npy`` files, for each dtype."""
    from kd_detect.data.format import FeatureFileWriter

    root = Path(root)
    classes = [f"c{i:03d}" for i in range(shape.classes)]
    mods = [m for m, _ in shape.modalities]
    h5, npy = {}, {}
    writers = {dt: FeatureFileWriter(root / f"{shape.name}_{dt}.h5", classes, mods, dtype=dt) for dt in dtypes}
    try:
        for dt in dtypes:
            npy[dt] = root / f"{shape.name}_{dt}_npy"
            npy[dt].mkdir(parents=True, exist_ok=True)
        for video in generate_videos(shape, seed):
            for dt, writer in writers.items():
                writer.add(video)
                for m, arr in video.features.items():
                    np.save(npy[dt] / f"{video.video_id}_{m}.npy", arr.astype(dt))
        for dt, writer in writers.items():
            h5[dt] = writer.close()
    except BaseException:
        for writer in writers.values():
            if writer._tmp.exists():
                writer.abort()
        raise
    return GeneratedData(shape, h5, npy, classes)


# --------------------------------------------------------------------------- memory
def reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- output
def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory + rename."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: Path, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
