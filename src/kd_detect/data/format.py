"""HDF5 feature format, version 1 (DESIGN.md §4): constants, atomic writer, reader.

Layout::

    /                      attrs: kd_detect_format=1, classes=[str], modalities=[str]
    /videos/<video_id>/    attrs: subset (str), duration (float seconds)
        <modality>         float16|float32 (T, D_m)
        labels             uint8 (T, C)   multi-hot per step
        segments           float64 (N, 3) [class_id, start_s, end_s]

Step ``i`` sits at ``t_i = i * duration / T``; ``labels[i, c] = 1`` iff a segment of
class ``c`` has ``start < t_i < end`` (strict).

An **unlabelled** file (``FeatureFileWriter(..., labelled=False)``, root attr
``labelled = 0``) holds features only, no ``labels`` and no ``segments``: it is valid for
prediction (``kd-detect check --no-labels``, ``kd-detect predict``), never for training or
evaluation, whose readers refuse the missing ``labels`` by name. In a labelled file, the
videos of subset :data:`UNLABELLED` (``"unlabelled"``) may have neither field: extra
videos with features only, which a student may distil on (``data.unlabelled_subset``;
docs/method.md) and nothing evaluates on. A labelled file made by adding such videos to
a copy of another (``python -m data_prep.add_unlabelled``) names that file in the root
attr :data:`UNLABELLED_BASE` (JSON ``{path, size, mtime_ns, sha256}``,
:func:`kd_detect.io.file_identity`): its other videos are that file's, bit for bit, so a
teacher trained on it is a teacher of this one too. This module is the only place that knows
the layout; converters, the synthetic generator, the DataModule, the teacher cache and
``kd-detect check`` all go through it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from kd_detect.errors import FeatureFileError
from kd_detect.io import AtomicFile

FORMAT_ATTR = "kd_detect_format"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
VIDEOS_GROUP = "videos"
LABELS = "labels"
SEGMENTS = "segments"
RESERVED_NAMES = frozenset({LABELS, SEGMENTS, "mask", "meta"})
FEATURE_DTYPES = ("float16", "float32")
#: the subset whose videos may lack ``labels`` and ``segments`` in a labelled file
UNLABELLED = "unlabelled"
#: root attr of a file that is another labelled file plus videos of subset UNLABELLED
UNLABELLED_BASE = "unlabelled_base"




def labels_from_segments(
    segments: np.ndarray, num_steps: int, duration: float, num_classes: int
) -> np.ndarray:
    """Per-step multi-hot labels ``(T, C)`` uint8 from ``[class, start, end]`` rows.

    ``labels[i, c] = 1`` iff some segment of class ``c`` has ``start < i*duration/T < end``.
    """
    labels = np.zeros((num_steps, num_classes), dtype=np.uint8)
    if num_steps == 0 or len(segments) == 0:
        return labels
    t = np.arange(num_steps, dtype=np.float64) * (float(duration) / num_steps)
    for cls, start, end in np.asarray(segments, dtype=np.float64):
        inside = (t > start) & (t < end)
        labels[inside, int(cls)] = 1
    return labels


def step_times(num_steps: int, duration: float) -> np.ndarray:
    """Time in seconds of each step: ``t_i = i * duration / T``."""
    return np.arange(num_steps, dtype=np.float64) * (float(duration) / max(num_steps, 1))


@dataclass
class VideoRecord:
    """One video as written to / read from a feature file.

    ``features`` maps modality -> ``(T, D_m)`` array. ``labels`` may be ``None`` on
    write, in which case it is derived from ``segments`` by :func:`labels_from_segments`;
    a video of subset :data:`UNLABELLED` with no segments and no labels is written with
    neither field.
    """

    video_id: str
    subset: str
    duration: float
    features: dict[str, np.ndarray]
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labels: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(next(iter(self.features.values())).shape[0])


def _as_str_list(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class FeatureFileWriter:
    """Atomic writer: everything goes to a temporary file in the target directory,
    renamed over ``path`` only when :meth:`close` succeeds. An exception inside the
    ``with`` block (or a crash) never leaves a partial file under the final name.

    >>> with FeatureFileWriter("x.h5", classes=["a"], modalities=["rgb"]) as w:
    ...     w.add(VideoRecord("v1", "training", 10.0, {"rgb": feats}, segments))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        classes: Sequence[str],
        modalities: Sequence[str],
        dtype: str = "float16",
        attrs: Mapping[str, object] | None = None,
        compression: str | None = None,
        labelled: bool = True,
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        bad = RESERVED_NAMES.intersection(modalities)
        if bad:
            raise ValueError(f"modality names {sorted(bad)} are reserved by the format")
        if len(set(modalities)) != len(modalities) or not modalities:
            raise ValueError(f"modalities must be a non-empty list of unique names, got {list(modalities)}")
        self.path = Path(path)
        self.classes = list(classes)
        self.modalities = list(modalities)
        self.dtype = np.dtype(dtype)
        self.compression = compression
        self.labelled = bool(labelled)
        self._file = AtomicFile(self.path)
        self._tmp = self._file.tmp
        try:
            self._h5 = h5py.File(self._tmp, "w")
        except BaseException:
            self._file.abort()
            raise
        self._h5.attrs[FORMAT_ATTR] = FORMAT_VERSION
        self._h5.attrs["classes"] = self.classes
        self._h5.attrs["modalities"] = self.modalities
        for key, value in (attrs or {}).items():
            self._h5.attrs[key] = value
        if not self.labelled:
            self._h5.attrs["labelled"] = 0
        self._videos = self._h5.create_group(VIDEOS_GROUP)
        self._dims: dict[str, int] = {}
        self.num_videos = 0

    def add(self, video: VideoRecord) -> None:
        """Write one video; raises :class:`FeatureFileError` naming the video and field."""
        vid = video.video_id
        where = f"{self.path}: video {vid!r}"
        if not vid or "/" in vid:
            raise FeatureFileError(f"{where}: video ids must be non-empty and contain no '/'")
        if vid in self._videos:
            raise FeatureFileError(f"{where}: duplicate video id")
        missing = [m for m in self.modalities if m not in video.features]
        if missing:
            raise FeatureFileError(f"{where}: missing modalities {missing}")
        lengths = {m: np.asarray(video.features[m]).shape for m in self.modalities}
        steps = {shape[0] for shape in lengths.values()}
        if len(steps) != 1:
            raise FeatureFileError(f"{where}: modalities have different T: {lengths}")
        num_steps = steps.pop()
        if num_steps == 0:
            raise FeatureFileError(f"{where}: zero-length video")
        if not (np.isfinite(video.duration) and video.duration > 0):
            raise FeatureFileError(f"{where}: field 'duration' must be a positive number, got {video.duration}")
        segments = np.asarray(video.segments, dtype=np.float64)
        if not self.labelled and (segments.size or video.labels is not None):
            raise FeatureFileError(f"{where}: an unlabelled file takes no 'segments' or 'labels'")
        if segments.size == 0:
            segments = segments.reshape(0, 3)
        if segments.ndim != 2 or segments.shape[1] != 3:
            raise FeatureFileError(
                f"{where}: field 'segments' must be (N, 3) [class_id, start_s, end_s], got shape {segments.shape}"
            )
        if len(segments) and (
            not np.isfinite(segments).all()
            or (segments[:, 0] != np.round(segments[:, 0])).any()
            or (segments[:, 0] < 0).any() or (segments[:, 0] >= len(self.classes)).any()
            or (segments[:, 1] > segments[:, 2]).any()
        ):
            raise FeatureFileError(
                f"{where}: field 'segments' has a non-finite value, a class id that is not an integer in "
                f"[0, {len(self.classes)}) or start > end"
            )
        bare = video.subset == UNLABELLED and segments.size == 0 and video.labels is None
        labels = video.labels
        if labels is None:
            labels = labels_from_segments(segments, num_steps, video.duration, len(self.classes))
        labels = np.asarray(labels)
        if self.labelled and labels.shape != (num_steps, len(self.classes)):
            raise FeatureFileError(
                f"{where}: field 'labels' has shape {labels.shape}, expected ({num_steps}, {len(self.classes)})"
            )
        # Check every modality before creating the group: a caller that catches the error
        # (e.g. a converter skipping a messy row) must not be left with a half-written video.
        arrays = {}
        for m in self.modalities:
            arr = np.asarray(video.features[m])
            if arr.ndim != 2:
                raise FeatureFileError(f"{where}: modality {m!r} must be (T, D), got shape {arr.shape}")
            dim = self._dims.get(m, arr.shape[1])
            if arr.shape[1] != dim:
                raise FeatureFileError(f"{where}: modality {m!r} has dim {arr.shape[1]}, other videos have {dim}")
            arrays[m] = arr
        group = self._videos.create_group(vid)
        group.attrs["subset"] = str(video.subset)
        group.attrs["duration"] = float(video.duration)
        for key, value in video.attrs.items():
            group.attrs[key] = value
        for m, arr in arrays.items():
            self._dims.setdefault(m, arr.shape[1])
            group.create_dataset(m, data=arr.astype(self.dtype, copy=False), compression=self.compression)
        if self.labelled and not bare:
            group.create_dataset(LABELS, data=labels.astype(np.uint8, copy=False))
            group.create_dataset(SEGMENTS, data=segments)
        self.num_videos += 1

    def close(self) -> Path:
        """Finish the file and move it into place atomically."""
        try:
            self._h5.close()
        except BaseException:
            self._file.abort()
            raise
        return self._file.commit()

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        try:
            self._h5.close()
        finally:
            self._file.abort()

    def __enter__(self) -> "FeatureFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_feature_file(
    path: str | os.PathLike,
    classes: Sequence[str],
    modalities: Sequence[str],
    videos: Iterable[VideoRecord],
    dtype: str = "float16",
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """Write all ``videos`` to ``path`` atomically; returns the path."""
    with FeatureFileWriter(path, classes, modalities, dtype=dtype, attrs=attrs) as writer:
        for video in videos:
            writer.add(video)
    return Path(path)


def unlabelled_base(path: str | os.PathLike) -> dict | None:
    """What root attr :data:`UNLABELLED_BASE` of ``path`` records (the labelled file it was
    made from), ``None`` when it has none or is not a readable HDF5 file."""
    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get(UNLABELLED_BASE)
    except OSError:
        return None
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class FeatureFile:
    """Reader for a format-v1 file. Cheap to construct (reads only root attrs and the
    video index); the h5py handle is opened lazily and reopened after ``fork`` so one
    object may be shared with DataLoader workers safely.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FeatureFileError(f"{self.path}: no such feature file")
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        try:
            with h5py.File(self.path, "r") as h5:
                self._read_header(h5)
        except FeatureFileError:
            raise
        except (OSError, KeyError) as err:
            raise FeatureFileError(f"{self.path}: not a readable HDF5 feature file ({err})") from err

    def _read_header(self, h5: h5py.File) -> None:
        version = h5.attrs.get(FORMAT_ATTR)
        if version is None:
            raise FeatureFileError(f"{self.path}: root attr {FORMAT_ATTR!r} missing (not a kd_detect feature file)")
        try:
            known = int(version) in SUPPORTED_VERSIONS
        except (TypeError, ValueError):
            known = False
        if not known:
            raise FeatureFileError(
                f"{self.path}: unknown {FORMAT_ATTR}={version!r}; this reader knows {list(SUPPORTED_VERSIONS)}"
            )
        for key in ("classes", "modalities"):
            if key not in h5.attrs:
                raise FeatureFileError(f"{self.path}: root attr {key!r} missing")
            if np.ndim(h5.attrs[key]) != 1 or len(h5.attrs[key]) == 0:
                raise FeatureFileError(f"{self.path}: root attr {key!r} must be a non-empty list of names")
        self.classes = _as_str_list(h5.attrs["classes"])
        self.modalities = _as_str_list(h5.attrs["modalities"])
        self.attrs = {k: h5.attrs[k] for k in h5.attrs}
        if VIDEOS_GROUP not in h5:
            raise FeatureFileError(f"{self.path}: group '/{VIDEOS_GROUP}' missing")
        videos = h5[VIDEOS_GROUP]
        self.video_ids: list[str] = list(videos.keys())
        self.subsets: dict[str, str] = {}
        self.durations: dict[str, float] = {}
        self.lengths: dict[str, int] = {}
        self.modality_dims: dict[str, int] = {}
        for vid in self.video_ids:
            group = videos[vid]
            where = f"{self.path}: video {vid!r}"
            for attr in ("subset", "duration"):
                if attr not in group.attrs:
                    raise FeatureFileError(f"{where}: attr {attr!r} missing")
            subset = group.attrs["subset"]
            self.subsets[vid] = subset.decode() if isinstance(subset, bytes) else str(subset)
            self.durations[vid] = float(group.attrs["duration"])
            if self.modalities:
                first = self.modalities[0]
                if first not in group:
                    raise FeatureFileError(f"{where}: modality {first!r} missing")
                self.lengths[vid] = int(group[first].shape[0])
        if self.video_ids:
            first = videos[self.video_ids[0]]
            for m in self.modalities:
                if m in first and first[m].ndim == 2:
                    self.modality_dims[m] = int(first[m].shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def videos_in(self, subset: str | Sequence[str] | None) -> list[str]:
        """Video ids of one subset (or several, or all with ``None``), in file order."""
        if subset is None:
            return list(self.video_ids)
        wanted = {subset} if isinstance(subset, str) else set(subset)
        return [v for v in self.video_ids if self.subsets[v] in wanted]

    @property
    def h5(self) -> h5py.File:
        """The open handle of this process (reopened after fork)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def read(
        self,
        video_id: str,
        fields: Sequence[str],
        start: int = 0,
        stop: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Read ``fields`` (modalities and/or ``labels``) of one video, steps ``[start, stop)``."""
        try:
            group = self.h5[VIDEOS_GROUP][video_id]
        except KeyError as err:
            raise FeatureFileError(f"{self.path}: video {video_id!r} not in file") from err
        out = {}
        for name in fields:
            if name not in group:
                raise FeatureFileError(f"{self.path}: video {video_id!r}: field {name!r} missing")
            try:
                out[name] = group[name][start:stop]
            except OSError as err:
                raise FeatureFileError(
                    f"{self.path}: video {video_id!r}: field {name!r} unreadable (corrupt file?): {err}"
                ) from err
        return out

    def segments(self, video_id: str) -> np.ndarray:
        group = self.h5[VIDEOS_GROUP][video_id]
        if SEGMENTS not in group:
            return np.zeros((0, 3))
        return np.asarray(group[SEGMENTS][()], dtype=np.float64).reshape(-1, 3)

    def record(self, video_id: str) -> VideoRecord:
        """The whole video as a :class:`VideoRecord` (for tests and tools): every modality,
        ``labels`` (``None`` for a video without them: an unlabelled file, subset
        :data:`UNLABELLED`), the segments, and the video's other attrs (``fps``, ...)."""
        data = self.read(video_id, self.modalities)
        group = self.h5[VIDEOS_GROUP][video_id]
        labels = self.read(video_id, [LABELS])[LABELS] if LABELS in group else None
        attrs = {k: v for k, v in group.attrs.items() if k not in ("subset", "duration")}
        return VideoRecord(
            video_id, self.subsets[video_id], self.durations[video_id], data, self.segments(video_id), labels, attrs
        )
