"""A folder of per-video feature files: the layout common feature extractors write.

Layout (one folder per modality)::

    DIR/<video_id>.npy     numpy array (T, D)          (also accepted: (T, 1, ..., 1, D))
    DIR/<video_id>.pt      torch tensor (T, D), saved with torch.save (read with weights_only)

Step ``i`` of a video is the extractor's ``i``-th window; with a stride of ``S`` frames at
``fps`` frames per second the video lasts ``duration = T * S / fps`` seconds (format v1
places step ``i`` at ``t_i = i * duration / T``, DESIGN.md §4).

Rules (each violation is one :class:`FeatureDirError` line naming the file, the video and
what was expected):

* the folder exists and holds at least one ``.npy``/``.pt`` file; a video id present as both
  ``.npy`` and ``.pt`` is ambiguous and refused;
* each file holds a numeric ``(T, D)`` array (``T >= 1``; singleton middle axes squeezed),
  with finite values only;
* every video of the folder has the same ``D`` (the first video read fixes it).

:func:`iter_features` yields ``(video_id, (T, D) float32)``; :class:`FeatureDirDataset`
builds from it the very items :class:`kd_detect.data.dataset.FeatureDataset` gives for an
unlabelled HDF5 file, so the prediction batches (:func:`kd_detect.data.dataset.collate_videos`)
are the same whichever way the features arrive.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from kd_detect.errors import FeatureDirError

from .batch import LABELS
from .format import FEATURE_DTYPES

__all__ = [
    "FeatureDirDataset", "FeatureDirError", "check_array", "feature_dir_loader", "iter_features", "list_videos",
    "load_array", "read_durations", "read_steps",
]

SUFFIXES = (".npy", ".pt")


def list_videos(directory: str | os.PathLike, modality: str = "features") -> dict[str, Path]:
    """``{video_id: path}`` of the ``.npy``/``.pt`` files of ``directory``, sorted by id."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FeatureDirError(f"{directory}: {modality} feature folder not found")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in SUFFIXES or not path.is_file():
            continue
        vid = path.stem
        if vid in found:
            raise FeatureDirError(
                f"{path}: video {vid!r} has two {modality} feature files ({found[vid].name} and {path.name}); "
                "expected one .npy or one .pt per video"
            )
        found[vid] = path
    if not found:
        raise FeatureDirError(f"{directory}: no {modality} feature files (expected <video_id>.npy or .pt, one per video)")
    return dict(sorted(found.items()))


def load_array(path: str | os.PathLike, video_id: str | None = None, modality: str = "features") -> np.ndarray:
    """One feature file as float32 ``(T, D)``; :class:`FeatureDirError` when it is not one.

    Values are not checked here (see :func:`check_array`); a missing file is an error too.
    """
    path = Path(path)
    vid = path.stem if video_id is None else video_id
    where = f"{path}: video {vid!r}: {modality} features"
    if not path.is_file():
        raise FeatureDirError(f"{where}: file not found")
    if path.suffix == ".pt":
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for a bad file
            raise FeatureDirError(f"{where}: unreadable .pt file (expected a tensor saved with torch.save)") from err
        if not isinstance(obj, torch.Tensor):
            raise FeatureDirError(f"{where}: the .pt file holds a {type(obj).__name__}, expected a (T, D) tensor")
        if obj.dtype == torch.bfloat16:
            obj = obj.float()
        arr = obj.detach().numpy()
    elif path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise FeatureDirError(f"{where}: unreadable .npy file (expected a numeric (T, D) array)") from err
    else:
        raise FeatureDirError(f"{where}: unknown file type {path.suffix!r}, expected .npy or .pt")
    if arr.dtype.kind not in "fiu":
        raise FeatureDirError(f"{where}: dtype {arr.dtype}, expected a numeric (float) array")
    if arr.ndim > 2 and all(d == 1 for d in arr.shape[1:-1]):
        arr = arr.reshape(arr.shape[0], arr.shape[-1])
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FeatureDirError(f"{where}: shape {tuple(arr.shape)}, expected a 2-D (T, D) array with T, D >= 1")
    return np.asarray(arr, dtype=np.float32)


def read_steps(path: str | os.PathLike, video_id: str | None = None, modality: str = "features") -> int:
    """``T`` of a feature file without reading its values (``.npy`` memory-mapped, ``.pt``
    with ``torch.load(mmap=True)``); a file that cannot be read that way is loaded in full
    by :func:`load_array`, which names what is wrong with it."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            import torch

            arr = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if getattr(arr, "ndim", 0) >= 2 and arr.shape[0] >= 1:
            return int(arr.shape[0])
    except Exception:  # noqa: BLE001 - any failure: the full load below reports it
        pass
    return int(load_array(path, video_id, modality).shape[0])


def check_array(arr: np.ndarray, path: str | os.PathLike, video_id: str, modality: str = "features",
                dim: int | None = None) -> None:
    """Refuse non-finite values and a feature dim other than ``dim`` (when given)."""
    where = f"{path}: video {video_id!r}: {modality} features"
    if dim is not None and arr.shape[1] != dim:
        raise FeatureDirError(f"{where}: dim {arr.shape[1]}, expected {dim} like the other videos")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise FeatureDirError(f"{where}: non-finite values (NaN/inf) at {len(bad)} steps, first at step {bad[0]}")


def iter_features(
    directory: str | os.PathLike,
    video_ids: Sequence[str] | None = None,
    modality: str = "features",
    dim: int | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """``(video_id, (T, D) float32)`` for ``video_ids`` (default: every file, sorted by id).

    Every array is checked (:func:`load_array`, :func:`check_array`); ``D`` must equal
    ``dim`` when given, else the first video's.
    """
    files = list_videos(directory, modality)
    ids = list(files) if video_ids is None else list(video_ids)
    for vid in ids:
        path = files.get(vid, Path(directory) / f"{vid}.npy")
        arr = load_array(path, vid, modality)
        check_array(arr, path, vid, modality, dim)
        dim = arr.shape[1] if dim is None else dim
        yield vid, arr


def read_durations(path: str | os.PathLike) -> dict[str, float]:
    """A CSV table with columns ``video,duration`` (seconds; other columns ignored) →
    ``{video_id: duration}``. Every duration must be a finite number > 0 and every video
    appear once; a violation is one :class:`FeatureDirError` naming the file, line, video
    and field."""
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FeatureDirError(f"{path}: durations table not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FeatureDirError(f"{path}: unreadable durations table ({err})") from err
    rows = list(csv.reader(text.splitlines()))
    header = [c.strip() for c in rows[0]] if rows else []
    if "video" not in header or "duration" not in header:
        raise FeatureDirError(f"{path}:1: header must name columns video and duration, got {','.join(header)!r}")
    iv, idur = header.index("video"), header.index("duration")
    out: dict[str, float] = {}
    for line, fields in enumerate(rows[1:], start=2):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) <= max(iv, idur):
            raise FeatureDirError(f"{path}:{line}: {len(fields)} fields, expected the columns {','.join(header)}")
        vid, raw = fields[iv].strip(), fields[idur].strip()
        where = f"{path}:{line}: video {vid!r}: field 'duration'"
        if not vid:
            raise FeatureDirError(f"{path}:{line}: field 'video' is empty, expected a video id")
        if vid in out:
            raise FeatureDirError(f"{path}:{line}: video {vid!r} appears twice, expected one duration per video")
        try:
            value = float(raw)
        except ValueError:
            raise FeatureDirError(f"{where} is {raw!r}, expected a number of seconds") from None
        if not (np.isfinite(value) and value > 0):
            raise FeatureDirError(f"{where} is {raw!r}, expected a positive finite number of seconds")
        out[vid] = value
    return out


class FeatureDirDataset(Dataset):
    """Unlabelled prediction items from a per-video feature folder.

    Item ``k`` is what :meth:`kd_detect.data.dataset.FeatureDataset.__getitem__` returns for
    the same video of an unlabelled format-v1 file: ``{"features": {modality: (T, D)},
    "labels": None, "video_id", "duration", "length": T, "offset": 0, "segments": (0, 3)}``.
    ``duration`` is ``durations[video_id]`` when given, else ``T * step_seconds`` (stride /
    fps). ``dtype`` is the array's dtype in the item: ``"float16"`` rounds the features as a
    float16 HDF5 file stores them (bit-identical items to a converted file), ``"float32"``
    keeps them. Files are read and checked lazily, item by item, so a folder larger than
    memory streams; the ids, and the dim of the first video, are fixed at construction.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        modality: str = "rgb",
        video_ids: Sequence[str] | None = None,
        step_seconds: float | None = None,
        durations: Mapping[str, float] | None = None,
        dtype: str = "float32",
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise FeatureDirError(f"dtype must be one of {list(FEATURE_DTYPES)}, got {dtype!r}")
        if step_seconds is not None and not (np.isfinite(step_seconds) and step_seconds > 0):
            raise FeatureDirError(f"step_seconds (stride / fps) must be a positive number, got {step_seconds}")
        self.directory = Path(directory)
        self.modality = modality
        self.files = list_videos(directory, modality)
        if video_ids is None:
            self.video_ids = list(self.files)
        else:
            self.video_ids = list(video_ids)
            missing = [v for v in self.video_ids if v not in self.files]
            if missing:
                raise FeatureDirError(
                    f"{self.directory}: video {missing[0]!r}: {modality} feature file not found "
                    f"(expected {missing[0]}.npy or .pt; {len(missing)} video(s) missing)"
                )
        self.durations = dict(durations or {})
        if step_seconds is None:
            absent = [v for v in self.video_ids if v not in self.durations]
            if absent:
                raise FeatureDirError(
                    f"{self.directory}: video {absent[0]!r}: no duration (give step_seconds = stride / fps, "
                    "or a duration per video)"
                )
        self.step_seconds = step_seconds
        self.dtype = np.dtype(dtype)
        first = self.video_ids[0] if self.video_ids else None
        self.dim = load_array(self.files[first], first, modality).shape[1] if first is not None else None

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict:
        vid = self.video_ids[int(index)]
        path = self.files[vid]
        arr = load_array(path, vid, self.modality)
        check_array(arr, path, vid, self.modality, self.dim)
        if self.dtype == np.float16:
            if np.abs(arr).max() > np.finfo(np.float16).max:
                raise FeatureDirError(
                    f"{path}: video {vid!r}: {self.modality} features exceed the float16 range, use float32"
                )
            arr = arr.astype(np.float16)
        length = int(arr.shape[0])
        duration = self.durations.get(vid)
        if duration is None:
            duration = length * float(self.step_seconds)  # type: ignore[arg-type]
        return {
            "features": {self.modality: arr},
            LABELS: None,
            "video_id": vid,
            "duration": float(duration),
            "length": length,
            "offset": 0,
            "segments": np.zeros((0, 3), dtype=np.float64),
        }


def feature_dir_loader(
    directory: str | os.PathLike,
    num_classes: int,
    modality: str = "rgb",
    batch_size: int = 8,
    **dataset_kwargs,
):
    """A DataLoader of prediction batches (``kd_detect.data.batch`` layout, via
    :class:`~kd_detect.data.dataset.VideoCollate`) over a feature folder, in id order."""
    from torch.utils.data import DataLoader

    from .dataset import VideoCollate

    dataset = FeatureDirDataset(directory, modality, **dataset_kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=VideoCollate(num_classes))
