"""Teacher-output caches (DESIGN.md §4): a frozen teacher's features and logits for every
video, written once by ``kd-detect cache-teacher`` and read by the student instead of
running the teacher each step.

Layout::

    /                  attrs: kd_detect_teacher_cache=1, teacher_sha256, teacher_class,
                              classes, feature_dim, source_file, source_sha256,
                              [fold_seeds]  (a cross-fitted teacher's: its fold teachers' seeds, -1 unknown)
    /videos/<id>/features   float16|float32 (T, F_t)
    /videos/<id>/logits     float32 (T, C)

The cache holds whole-video outputs (the teacher saw the full temporal context); a
student batch with a random crop reads exactly the cropped window ``[offset, offset+T)``.
A cache whose ``teacher_sha256`` differs from the checkpoint's is stale and refused.

``source_sha256`` is the content identity of the feature file the cache was computed from
(:func:`kd_detect.io.content_hash`: size and the first/last MiB). :meth:`TeacherCache.check_source`
refuses, with :class:`~kd_detect.errors.StaleCacheError` naming both files, a cache used with
another feature file (same ids and T or not). A cache written before this attribute existed
is refused too, with the command that rebuilds it: its source cannot be verified, and
silently distilling from another file's teacher outputs is the failure this guards against.

``fold_seeds`` tells whether a cross-fitted teacher's features share one basis
(:attr:`TeacherCache.shares_one_space`, :func:`one_seed`; see ``kd_detect.modules.cross_fit``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np
import torch
from torch import Tensor

from kd_detect.data.batch import to_model_layout
from kd_detect.data.dataset import Layout, read_rows, transpose_into
from kd_detect.data.format import FeatureFileError, _as_str_list
from kd_detect.errors import StaleCacheError
from kd_detect.io import atomic_write, content_hash, raise_pending_signal
from kd_detect.models.heads.base import HeadOutput

CACHE_ATTR = "kd_detect_teacher_cache"
CACHE_VERSION = 1


def one_seed(seeds: Iterable[int | None]) -> bool | None:
    """Whether fold teachers started from one seed: ``None`` when a seed is unknown."""
    seeds = list(seeds)
    if any(seed is None for seed in seeds):
        return None
    return len(set(seeds)) == 1


def write_teacher_cache(
    teacher: Any,
    loader: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    teacher_sha256: str,
    source_file: str = "",
    feature_dtype: str = "float32",
    device: str | torch.device = "cpu",
) -> Path:
    """Run ``teacher`` (a DetectorModule) in eval mode over whole videos from ``loader``
    (evaluation batches: no crops) and write its outputs atomically to ``out``."""
    out = Path(out)
    teacher = teacher.to(device).eval()
    with atomic_write(out) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs[CACHE_ATTR] = CACHE_VERSION
            h5.attrs["teacher_sha256"] = teacher_sha256
            h5.attrs["teacher_class"] = f"{type(teacher).__module__}.{type(teacher).__qualname__}"
            h5.attrs["classes"] = list(teacher.classes)
            h5.attrs["feature_dim"] = int(teacher.feature_dim)
            h5.attrs["source_file"] = str(source_file)
            h5.attrs["source_sha256"] = content_hash(source_file) if source_file else ""
            seeds = getattr(teacher, "seeds", None)
            if seeds is not None:  # cross-fitted
                h5.attrs["fold_seeds"] = [-1 if seed is None else int(seed) for seed in seeds]
            videos = h5.create_group("videos")
            with torch.no_grad():
                for batch in loader:
                    raise_pending_signal()  # a Ctrl-C that a finaliser swallowed (kd_detect.io)
                    batch = to_model_layout(batch, device)
                    result = teacher(batch)
                    lengths = batch["mask"].sum(1).tolist()
                    for i, vid in enumerate(batch["meta"]["video_id"]):
                        g = videos.create_group(vid)
                        n = lengths[i]
                        g.create_dataset("features", data=result.features[i, :, :n].T.float().cpu().numpy().astype(feature_dtype))
                        g.create_dataset("logits", data=result.logits[i, :, :n].T.float().cpu().numpy())
    return out


def cache_source(path: str | os.PathLike) -> tuple[str, str]:
    """``(source_file, source_sha256)`` a cache records of the feature file it was computed
    from (empty strings when it records none), without opening it as a :class:`TeacherCache`."""
    with h5py.File(path, "r") as h5:
        return str(h5.attrs.get("source_file", "")), str(h5.attrs.get("source_sha256", ""))


class TeacherCache:
    """Reads cached teacher outputs for a batch (lazily opened, fork-safe, optional preload)."""

    def __init__(self, path: str | os.PathLike, expected_sha256: str | None = None, preload: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FeatureFileError(
                f"{self.path}: teacher cache not found; write it with `kd-detect cache-teacher --ckpt TEACHER.ckpt "
                f"--data FILE.h5 --out {self.path}`"
            )
        try:
            with h5py.File(self.path, "r") as h5:
                if int(h5.attrs.get(CACHE_ATTR, -1)) != CACHE_VERSION:
                    raise FeatureFileError(f"{self.path}: not a kd_detect teacher cache (attr {CACHE_ATTR!r})")
                self.teacher_sha256 = str(h5.attrs["teacher_sha256"])
                self.classes = _as_str_list(h5.attrs["classes"])
                self.feature_dim = int(h5.attrs["feature_dim"])
                self.video_ids = set(h5["videos"].keys())
                self.source_file = str(h5.attrs.get("source_file", ""))
                self.source_sha256 = str(h5.attrs.get("source_sha256", ""))
                folds = h5.attrs.get("fold_seeds")
                cross_fitted = str(h5.attrs.get("teacher_class", "")).endswith("CrossFittedTeacher")
        except OSError as err:
            raise FeatureFileError(f"{self.path}: unreadable teacher cache ({err})") from err
        #: a cross-fitted teacher's fold seeds (``None`` each when unknown); ``None``: one teacher
        self.fold_seeds: list[int | None] | None = (
            [None if int(seed) < 0 else int(seed) for seed in folds] if folds is not None
            else [None] if cross_fitted else None  # a cross-fitted cache written before the seeds were kept
        )
        if expected_sha256 is not None and expected_sha256 != self.teacher_sha256:
            raise FeatureFileError(
                f"{self.path}: stale teacher cache: written for checkpoint sha256 {self.teacher_sha256[:12]}…, "
                f"the teacher checkpoint now has {expected_sha256[:12]}…; rerun `kd-detect cache-teacher`"
            )
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._ram: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self._layouts: dict[str, Layout] = {}  # byte offsets of the cached datasets (read_rows)
        if preload:
            with h5py.File(self.path, "r") as h5:
                self._ram = {v: (g["features"][()], g["logits"][()]) for v, g in h5["videos"].items()}

    @property
    def shares_one_space(self) -> bool | None:
        """Whether every video's features come from networks with one basis: ``True`` for a
        single teacher, :func:`one_seed` of the fold seeds for a cross-fitted one."""
        return True if self.fold_seeds is None else one_seed(self.fold_seeds)

    def check_source(self, data_path: str | os.PathLike) -> None:
        """Raise :class:`StaleCacheError` unless this cache was computed from a feature file
        with the content identity of ``data_path`` (see the module docstring)."""
        rebuild = (f"rebuild it: `kd-detect cache-teacher --ckpt TEACHER.ckpt --data {data_path} "
                   f"--out {self.path}`")
        if not self.source_sha256:
            raise StaleCacheError(
                f"{self.path}: teacher cache records no content identity of its feature file "
                f"(written by an older kd_detect from {self.source_file or 'an unknown file'}), so it cannot be "
                f"checked against {data_path}; {rebuild}"
            )
        if content_hash(data_path) != self.source_sha256:
            raise StaleCacheError(
                f"{self.path}: stale teacher cache: computed from {self.source_file or 'another file'} "
                f"(content {self.source_sha256[:12]}…), but the data file {data_path} has other content; {rebuild}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _handle(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def _read(self, vid: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[start, stop)`` of one video's cached features and logits, stored dtype."""
        if self._ram is not None:
            feats, logits = self._ram[vid]
            return feats[start:stop], logits[start:stop]
        h5 = self._handle()
        out = []
        for name in ("features", "logits"):
            rows = read_rows(h5, f"videos/{vid}/{name}", start, stop, self._layouts)
            if rows is None:
                raise FeatureFileError(f"{self.path}: video {vid!r}: field {name!r} missing (corrupt cache?)")
            out.append(rows)
        return out[0], out[1]

    def batch(self, meta: dict[str, Any], mask: Tensor) -> HeadOutput:
        """Teacher outputs ``(B, F_t, T)``/``(B, C, T)`` aligned with a batch's windows:
        video ``b`` gets steps ``[offset_b, offset_b + valid_b)`` of its cached outputs
        (one contiguous ``(n, F)`` read per field, transposed once into the batch tensor)."""
        ids = meta["video_id"]
        num_steps = mask.shape[1]
        missing = [v for v in ids if v not in self.video_ids]
        if missing:
            raise FeatureFileError(f"{self.path}: teacher cache has no entry for videos {missing[:5]}")
        feats = torch.empty(len(ids), self.feature_dim, num_steps)
        logits = torch.empty(len(ids), self.num_classes, num_steps)
        offsets = meta["offset"].tolist()
        valid = mask.sum(1).tolist()
        for i, vid in enumerate(ids):
            start = int(offsets[i])
            f, lg = self._read(vid, start, start + int(valid[i]))
            n = f.shape[0]
            if n != valid[i]:
                raise FeatureFileError(
                    f"{self.path}: video {vid!r}: cache has {start + n} steps but the batch needs "
                    f"[{start}, {start + int(valid[i])}) (cache written from another feature file?)"
                )
            transpose_into(feats, i, f)
            transpose_into(logits, i, lg)
        return HeadOutput(feats.to(mask.device), logits.to(mask.device))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state
