"""Map-style dataset over a format-v1 file, the batch collate and the samplers
behind :class:`~kd_detect.data.feature_data.FeatureData` and its Lightning face
``FeatureDataModule`` (DESIGN.md §2, §4, §5).

* :class:`FeatureDataset` reads one video (or a window of it) with one read per field
  (:func:`read_rows`: a single ``pread`` of the rows' bytes for the contiguous datasets
  the writer produces, h5py otherwise); with ``preload`` it keeps the needed videos in
  RAM in their stored dtype, so lazy and preloaded datasets give bit-identical items.
  A whole batch (:meth:`FeatureDataset.__getitems__`) is copied from a mapping of the
  file straight into the batch's arrays, one ``np.concatenate`` per field, in pooled
  huge-page memory (:func:`batch_memory`), and handed over as a :class:`ReadBatch` whose
  item dicts are only built if someone asks for them.
* Training crops are derived from ``(seed, epoch, index)`` only: the training sampler
  yields ``(index, epoch)`` keys, so every worker and every rank agrees without any
  global RNG state.
* :func:`collate_videos` pads to the longest window of the batch and builds the host-layout
  batch of ``kd_detect.data.batch``: a :class:`ReadBatch`'s arrays as they are, other items
  by one row copy each into a ``(B, T, D)`` tensor of the stored dtype (no transpose, no
  cast; those happen on the device, after transfer).
* :class:`UnrepeatedDistributedSampler` partitions evaluation videos over ranks without
  padding (every video counted exactly once in the metrics, DESIGN.md §5).
"""

from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Collection, Sequence
from typing import Iterator, NamedTuple

import h5py
import numpy as np
import torch
from h5py import h5d, h5s
from torch.utils.data import Dataset, DistributedSampler

from .batch import HOST_LAYOUT, LABELLED, LABELS, LAYOUT, MASK, META
from .format import SEGMENTS, UNLABELLED, VIDEOS_GROUP, FeatureFile, FeatureFileError

Key = int | tuple[int, int]
POOL_BUFFERS = 32  # batch buffers a dataset keeps for reuse (a few live batches x fields)
HUGE_PAGE = 2 << 20  # bytes; batch buffers at least this large are mapped in whole huge pages (batch_memory)


# ---------------------------------------------------------------------------- reading
class NotADatasetError(KeyError):
    """The path exists in the file but is a group, not a dataset."""


class Layout(NamedTuple):
    """Where a dataset's bytes are: ``offset`` of row 0 in the file when they can be read
    directly (contiguous, unfiltered, native byte order), else ``None`` (read via HDF5)."""

    offset: int | None
    shape: tuple[int, ...]
    dtype: np.dtype


def dataset_layout(h5: h5py.File, path: str) -> Layout | None:
    """The :class:`Layout` of dataset ``path``, ``None`` when it does not exist
    (:class:`NotADatasetError` when it is a group)."""
    try:
        dsid = h5d.open(h5.id, path.encode())
    except KeyError:
        if path in h5:
            raise NotADatasetError(path) from None
        return None
    shape = dsid.get_space().shape
    if len(shape) == 0:
        raise ValueError("scalar dataset, expected an array")
    dtype = dsid.dtype
    offset = None
    if h5.driver == "sec2" and dtype.isnative and not dtype.hasobject and dtype.names is None:
        plist = dsid.get_create_plist()
        if plist.get_layout() == h5d.CONTIGUOUS and plist.get_external_count() == 0:
            offset = dsid.get_offset()  # None while no storage is allocated (reads give fill values)
    return Layout(offset, tuple(shape), dtype)


def read_rows(
    h5: h5py.File, path: str, start: int, stop: int | None, layouts: dict[str, Layout] | None = None
) -> np.ndarray | None:
    """Rows ``[start, stop)`` (clipped like a slice) of dataset ``path`` in its stored dtype,
    ``None`` when the dataset does not exist.

    Contiguous datasets -- what :class:`~kd_detect.data.format.FeatureFileWriter` writes --
    are read with one ``pread`` of exactly those rows' bytes from h5py's own file handle
    (their byte offset looked up once and kept in ``layouts``); anything else (chunked,
    compressed, external, foreign byte order) goes through one HDF5 hyperslab read. Both
    give the same array; the direct read skips the per-call cost of the HDF5 library
    (several times the copy itself for a Charades-sized video).
    """
    layout = layouts.get(path) if layouts is not None else None
    if layout is None:
        layout = dataset_layout(h5, path)
        if layout is None:
            return None
        if layouts is not None:
            layouts[path] = layout
    shape = layout.shape
    first, last, _ = slice(start, stop).indices(shape[0])
    rows = max(0, last - first)
    out = np.empty((rows, *shape[1:]), dtype=layout.dtype)
    if rows == 0:
        return out
    if layout.offset is not None:
        row_bytes = out.nbytes // rows
        _pread_into(h5.id.get_vfd_handle(), out, layout.offset + first * row_bytes)
        return out
    dsid = h5d.open(h5.id, path.encode())
    space = dsid.get_space()
    space.select_hyperslab((first,) + (0,) * (len(shape) - 1), out.shape)
    dsid.read(h5s.create_simple(out.shape), space, out)
    return out


def _pread_into(fd: int, out: np.ndarray, pos: int) -> None:
    """Fill ``out`` (C-contiguous) with the file's bytes at ``pos``; a short file is an error."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], pos + done)
        if n <= 0:
            raise OSError(f"file ends {len(view) - done} bytes before the dataset's data (truncated file?)")
        done += n


def batch_memory(nbytes: int) -> np.ndarray:
    """A flat, writable, uninitialised ``uint8`` array of at least ``nbytes`` bytes for
    batch arrays (the base of every array :meth:`FeatureDataset._batch_array` hands out).

    From :data:`HUGE_PAGE` bytes on it is an anonymous **private** mapping rounded up to
    whole 2 MiB pages and advised ``MADV_HUGEPAGE``: the kernel backs it with transparent
    huge pages, so copying a batch into it takes ~500 times fewer TLB misses. On the
    benchmark VM (a KVM guest: every miss walks two page tables) that makes the loader
    ≈ 10 % faster (docs/performance.md); ``np.empty``'s large blocks start 16 bytes into a
    page, so only their aligned interior can get huge pages. Private, not shared: a forked
    DataLoader worker gets copy-on-write pages, never the parent's batch memory. Smaller
    buffers, and platforms without these flags, get ``np.empty``. Views of the returned
    array have it as their ``base`` (it is an ndarray over the mapping), which the pool's
    reference count relies on.
    """
    if nbytes >= HUGE_PAGE and hasattr(mmap, "MAP_PRIVATE"):
        size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                memory.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # transparent huge pages unavailable: ordinary pages
                pass
        return np.frombuffer(memory, np.uint8)
    return np.empty(max(nbytes, 1), np.uint8)


def crop_offset(seed: int, epoch: int, index: int, length: int, max_steps: int | None) -> int:
    """First step of the training window of video ``index`` at ``epoch`` (0 if no crop)."""
    if max_steps is None or length <= max_steps:
        return 0
    rng = np.random.default_rng([seed, epoch, index])
    return int(rng.integers(0, length - max_steps + 1))


class ReadBatch(Sequence):
    """The items of one :meth:`FeatureDataset.__getitems__` (a read-only sequence of item
    dicts) with ``arrays``: the ``(B, T_max, ...)`` array of every field (the modalities
    in item order, then labels; padding rows zeroed), ``windows``: each item's
    ``(index, video_id, length, offset, stop)``, ``counts``: its number of rows ``n_b``, and
    the batch's ``meta`` columns and ``mask`` (numpy), prepared when it is made -- in
    :meth:`FeatureDataset.__getitems__`, before the copies.

    The item dicts, whose arrays are the row views ``arrays[f][b, :n_b]`` (``views``), are
    built on first access only: the DataLoader hands the batch straight to
    :func:`collate_videos`, which takes ``arrays``, ``meta`` and ``mask`` as the batch --
    no per-video dicts or views (Python work that, between multi-MiB copies
    which evict the interpreter's objects from the caches, costs several times what it costs
    in a loop of small reads). Once built, the collate takes ``arrays`` only while every item
    still holds exactly its views (an item given other rows is collated by copying)."""

    def __init__(self, dataset: "FeatureDataset", windows: list[tuple], arrays: list[np.ndarray],
                 counts: list[int]) -> None:
        self.dataset, self.windows, self.arrays, self.counts = dataset, windows, arrays, counts
        self._items: list[dict] | None = None
        self._views: list[tuple[np.ndarray, ...]] | None = None
        duration_of, segments_of = dataset.file.durations, dataset._read_segments
        self.meta = _meta_columns([(video_id, duration_of[video_id], length, offset, segments_of(video_id))
                                   for _, video_id, length, offset, _ in windows], [True] * len(windows))
        self.mask = _mask(counts, max(counts))

    @property
    def views(self) -> list[tuple[np.ndarray, ...]]:
        """Per item, its rows ``arrays[f][b, :n_b]`` of every field (modalities, labels)."""
        if self._views is None:
            self._views = [tuple(array[b, :n] for array in self.arrays) for b, n in enumerate(self.counts)]
        return self._views

    def items(self) -> list[dict]:
        """The item dicts (built once), as :meth:`FeatureDataset.__getitem__` gives them."""
        if self._items is None:
            modalities, make = self.dataset.modalities, self.dataset._item
            self._items = [make(video_id, length, offset, dict(zip(modalities, views)), views[-1], True)
                           for (_, video_id, length, offset, _), views in zip(self.windows, self.views)]
        return self._items

    def intact(self) -> bool:
        """True while ``arrays`` are this batch: no item built yet, or every built item
        still holds exactly its row views and nothing else."""
        if self._items is None:
            return True
        fields = len(self.arrays)
        for item, views in zip(self._items, self._views):
            features = item["features"]
            if item[LABELS] is not views[-1] or len(features) != fields - 1:
                return False
            for array, view in zip(features.values(), views):
                if array is not view:
                    return False
        return True

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index):  # type: ignore[override]
        return self.items()[index]


class FeatureDataset(Dataset):
    """Videos ``video_ids`` of ``feature_file``; items are dicts (see :meth:`__getitem__`).

    ``max_steps`` (training only) crops a window of at most that many steps at
    :func:`crop_offset`; ``None`` returns whole videos. A key is an index or an
    ``(index, epoch)`` pair (what :class:`EpochDistributedSampler` yields).
    ``unlabelled``: ids whose ``labels`` and ``segments`` are never read, even when the file
    has them: their items carry ``labels=None`` (zeros in a batch) and ``labelled=False``.
    """

    def __init__(
        self,
        feature_file: FeatureFile,
        video_ids: Sequence[str],
        modalities: Sequence[str],
        max_steps: int | None = None,
        seed: int = 0,
        require_labels: bool = True,
        preload: bool = False,
        unlabelled: Collection[str] = (),
    ) -> None:
        self.file = feature_file
        self.unlabelled = frozenset(unlabelled)
        self.video_ids = list(video_ids)
        self.modalities = list(modalities)
        self.lengths = [feature_file.lengths[v] for v in self.video_ids]
        self.max_steps = max_steps
        self.seed = seed
        self.require_labels = require_labels
        self.epoch = 0
        self._segments: dict[str, np.ndarray] = {}
        self._layouts: dict[str, Layout] = {}
        self._fields = (*self.modalities, LABELS)  # what __getitems__ reads, in this order
        self._rows: dict[int, tuple[np.ndarray, ...] | None] = {}  # per video index (_direct_rows)
        self._spec: tuple[tuple[int, np.dtype], ...] | None = None  # (width, dtype) per field
        self._cache: dict[str, dict[str, np.ndarray | None]] | None = None
        self._pool: list[np.ndarray] = []  # batch memory for __getitems__, reused once released
        self._zeros: dict[int, np.ndarray] = {}  # row bytes -> zero rows (_zero_rows)
        self._map: np.ndarray | None = None  # the file, mapped (_mapped), for this process
        self._map_key: tuple[int, ...] | None = None  # (pid, device, inode, size) it was made for
        self._map_handle: h5py.File | None = None  # the handle it was last checked against
        if preload:
            self.preload()

    def __len__(self) -> int:
        return len(self.video_ids)

    # ------------------------------------------------------------------ reading
    def _read_field(self, video_id: str, field: str, start: int, stop: int | None) -> np.ndarray | None:
        """Rows ``[start, stop)`` of ``field`` in its stored dtype, ``None`` when the field is absent."""
        try:
            return read_rows(self.file.h5, f"{VIDEOS_GROUP}/{video_id}/{field}", start, stop, self._layouts)
        except NotADatasetError:
            raise FeatureFileError(f"{self.file.path}: video {video_id!r}: field {field!r} is not a dataset") from None
        except (OSError, TypeError, ValueError) as err:
            raise FeatureFileError(
                f"{self.file.path}: video {video_id!r}: field {field!r} unreadable (corrupt file?): {err}"
            ) from err

    def _missing(self, video_id: str, field: str, what: str) -> FeatureFileError:
        return FeatureFileError(
            f"{self.file.path}: video {video_id!r}: field {field!r} missing (expected {what}); "
            f"run `kd-detect check {self.file.path}` for a full report"
        )

    def _read_segments(self, video_id: str) -> np.ndarray:
        if video_id not in self._segments:
            seg = None if video_id in self.unlabelled else self._read_field(video_id, SEGMENTS, 0, None)
            seg = np.zeros((0, 3)) if seg is None else np.asarray(seg, dtype=np.float64).reshape(-1, 3)
            self._segments[video_id] = seg
        return self._segments[video_id]

    def _read(self, video_id: str, start: int, stop: int | None) -> dict[str, np.ndarray | None]:
        if self._cache is not None:
            cached = self._cache[video_id]
            return {k: (None if v is None else v[start:stop]) for k, v in cached.items()}
        return self._read_file(video_id, start, stop)

    def _read_file(self, video_id: str, start: int, stop: int | None) -> dict[str, np.ndarray | None]:
        out: dict[str, np.ndarray | None] = {}
        for m in self.modalities:
            arr = self._read_field(video_id, m, start, stop)
            if arr is None:
                raise self._missing(video_id, m, f"modality {m!r} as (T, D) float16/float32")
            out[m] = arr
        if video_id in self.unlabelled:
            out[LABELS] = None
            return out
        labels = self._read_field(video_id, LABELS, start, stop)
        if labels is None and self.require_labels and self.file.subsets.get(video_id) != UNLABELLED:
            raise self._missing(video_id, LABELS, "uint8 (T, C); use require_labels=False to predict without")
        out[LABELS] = labels
        return out

    def preload(self) -> None:
        """Read every video of this dataset into RAM once (stored dtype kept)."""
        cache = {}
        for vid in self.video_ids:
            cache[vid] = self._read_file(vid, 0, None)
            self._read_segments(vid)
        self._cache = cache

    # ------------------------------------------------------------------ items
    def _window(self, key: Key) -> tuple[int, str, int, int, int | None]:
        """``(index, video_id, length, offset, stop)`` of the window a key selects (``stop``
        is ``None`` for a whole video)."""
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        index = int(index)
        length = self.lengths[index]
        max_steps = self.max_steps
        if max_steps is None or length <= max_steps:
            return index, self.video_ids[index], length, 0, None
        offset = crop_offset(self.seed, int(epoch), index, length, max_steps)
        return index, self.video_ids[index], length, offset, offset + max_steps

    def _item(self, video_id: str, length: int, offset: int, features: dict, labels: np.ndarray | None,
              labelled: bool) -> dict:
        return {
            "features": features,
            LABELS: labels,
            LABELLED: labelled,
            "video_id": video_id,
            "duration": self.file.durations[video_id],
            "length": length,
            "offset": offset,
            "segments": self._read_segments(video_id),
        }

    def _direct_rows(self, index: int) -> tuple[np.ndarray, ...] | None:
        """Every field (modalities, then labels) of video ``index`` as a ``(length,
        row_bytes)`` ``uint8`` view of the mapped file (:meth:`_mapped`) when all of them can
        be copied into a batch array directly -- contiguous, 2-D, ``length`` rows, inside the
        file, and the width and dtype of the dataset's first such video (``self._spec``) --
        else ``None``. Looked up once per video and kept until :meth:`_mapped` maps anew
        (which :meth:`__getitems__` asks first)."""
        cached = self._rows.get(index)
        if cached is not None or index in self._rows:
            return cached
        mapped = self._mapped()
        h5, video_id, length = self.file.h5, self.video_ids[index], self.lengths[index]
        if video_id in self.unlabelled:  # its labels are not to be read: item by item
            self._rows[index] = None
            return None
        layouts = []
        for field in self._fields:
            try:
                layout = dataset_layout(h5, f"{VIDEOS_GROUP}/{video_id}/{field}")
            except (KeyError, OSError, TypeError, ValueError):
                layout = None
            if (layout is None or layout.offset is None or len(layout.shape) != 2 or layout.shape[0] != length
                    or mapped is None or layout.offset + length * layout.shape[1] * layout.dtype.itemsize > len(mapped)):
                self._rows[index] = None  # (a file shorter than its data: the per-item read says so)
                return None
            layouts.append(layout)
        spec = tuple((layout.shape[1], layout.dtype) for layout in layouts)
        if self._spec is None:
            try:
                for _, dtype in spec:
                    _torch_dtype(dtype)
            except TypeError:  # a dtype torch has no tensor for
                self._rows[index] = None
                return None
            self._spec = spec
        rows = None
        if spec == self._spec:
            rows = tuple(mapped[lay.offset:lay.offset + length * width * dtype.itemsize].reshape(length, -1)
                         for lay, (width, dtype) in zip(layouts, spec))
        self._rows[index] = rows
        return rows

    def __getitems__(self, keys: Sequence[Key]) -> Sequence[dict]:
        """The items of one batch (what the DataLoader asks for), each field copied from the
        mapped file straight into a shared ``(B, T_max, ...)`` array of its stored dtype,
        padding rows zeroed: a :class:`ReadBatch` whose items' arrays are row views of those
        arrays, which :func:`collate_videos` takes as the batch without copying.

        One ``np.concatenate`` per field fills its whole array: the pieces are, per video,
        its window's rows (``uint8`` views of the mapping) and, below a shorter window, rows
        of zeros (:meth:`_zero_rows`), so the copying and zeroing run in one C loop instead
        of two Python-level assignments per video and field.
        Only for what the direct read covers (:meth:`_direct_rows`: lazy reads of
        contiguous datasets of one width and dtype whose row count is the video's length);
        anything else, and every error, goes through :meth:`__getitem__` item by item, with
        the same batch."""
        if self._cache is not None or not keys or self._mapped() is None:
            return [self[k] for k in keys]
        windows = [self._window(k) for k in keys]
        sources = []
        for index, _, _, offset, stop in windows:
            video_rows = self._direct_rows(index)
            if video_rows is None:
                return [self[k] for k in keys]
            if stop is not None:  # a cropped training window
                video_rows = tuple(rows[offset:stop] for rows in video_rows)
            sources.append(video_rows)
        counts = [len(video_rows[0]) for video_rows in sources]
        steps = max(counts)
        arrays: list[np.ndarray] = []
        read = ReadBatch(self, windows, arrays, counts)  # its meta first: Python before the copies
        for f, (width, dtype) in enumerate(self._spec):
            buf = self._batch_array((len(keys), steps, width), dtype)
            row_bytes = width * dtype.itemsize
            zeros = self._zero_rows(steps, row_bytes)
            pieces = []
            for video_rows, n in zip(sources, counts):
                pieces.append(video_rows[f])
                if n < steps:
                    pieces.append(zeros[n:])
            np.concatenate(pieces, out=buf.view(np.uint8).reshape(len(keys) * steps, row_bytes))
            arrays.append(buf)
        return read

    def _zero_rows(self, rows: int, row_bytes: int) -> np.ndarray:
        """A read-only ``(rows, row_bytes)`` ``uint8`` array of zeros (the source of padding
        rows): one zero row repeated (stride 0), so copying from it reads one cache-resident
        row, where a real zero array of that size would be read from memory (slower,
        docs/performance.md). Kept per row width, grown when a longer one is asked for."""
        zeros = self._zeros.get(row_bytes)
        if zeros is None or len(zeros) < rows:
            zeros = self._zeros[row_bytes] = np.broadcast_to(np.zeros(row_bytes, np.uint8), (rows, row_bytes))
        return zeros[:rows]

    def _mapped(self) -> np.ndarray | None:
        """The whole file as a read-only ``uint8`` array (``mmap`` of h5py's own handle),
        ``None`` when it cannot be mapped. Made once per process and file: a new process
        (a DataLoader worker), or a handle reopened on another file at the same path (an
        atomic replacement), maps anew and forgets the row views of :meth:`_direct_rows`.
        The batched read copies rows from it: one ``memcpy`` per field and video, measured
        ≈ 10 % faster than ``pread`` into the same batch memory for ~90-step videos and as
        fast for long ones (docs/performance.md). Truncating a file *in place* while it is
        read is not supported (as with any mapped reader); every kd_detect writer replaces
        files atomically, which an existing mapping survives. While the handle is the one
        the mapping was checked against (same h5py object, same process) nothing is asked of
        the system: an open descriptor keeps naming the same file."""
        h5 = self.file.h5
        if h5 is self._map_handle and self._map_key is not None and self._map_key[0] == os.getpid():
            return self._map
        try:
            fd = h5.id.get_vfd_handle()
            stat = os.fstat(fd)
        except (OSError, ValueError, TypeError):  # a driver without a descriptor...
            return None
        key = (os.getpid(), stat.st_dev, stat.st_ino, stat.st_size)
        if key != self._map_key:
            self._map, self._map_key, self._rows = None, key, {}
            try:
                self._map = np.frombuffer(mmap.mmap(fd, 0, access=mmap.ACCESS_READ), np.uint8)
            except (OSError, ValueError):  # an empty file...
                self._map = None
        self._map_handle = h5
        return self._map

    def _batch_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape``/``dtype`` whose ``base`` is a
        flat byte buffer of this dataset's pool, reused once nothing refers to it any more
        (no batch tensor, item or view): fresh multi-MiB allocations are returned to the
        kernel on free and page-faulted in again on every batch, which cost more than the
        reads themselves on the benchmark VM. New buffers come from :func:`batch_memory`."""
        need = math.prod(shape) * dtype.itemsize
        flat = None
        for candidate in self._pool:
            # the smallest free buffer that fits (a small field never takes a large one);
            # referents: the pool list, `candidate`, getrefcount's argument -- nobody else
            if (candidate.nbytes >= need and (flat is None or candidate.nbytes < flat.nbytes)
                    and sys.getrefcount(candidate) == 3):
                flat = candidate
        if flat is None:
            flat = batch_memory(need)
            if len(self._pool) < POOL_BUFFERS:
                self._pool.append(flat)
        return flat[:need].view(dtype).reshape(shape)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"], state["_zeros"] = [], {}  # batch memory stays with its process
        state["_map"], state["_map_key"], state["_rows"] = None, None, {}  # so do the mapping and its views
        state["_map_handle"] = None
        return state

    def __getitem__(self, key: Key) -> dict:
        """``{"features": {m: (L, D_m)}, "labels": (L, C) uint8 | None, "labelled", "video_id",
        "duration", "length", "offset", "segments"}`` for the window ``[offset, offset + L)``
        (``labelled``: whether ``labels`` were read)."""
        index, video_id, length, offset, stop = self._window(key)
        data = self._read(video_id, offset, stop)
        labels = data.pop(LABELS)
        window = len(next(iter(data.values())))
        for m, arr in data.items():
            if arr.ndim != 2 or len(arr) != window:
                raise FeatureFileError(
                    f"{self.file.path}: video {video_id!r}: modality {m!r} has shape {arr.shape}, expected "
                    f"({window}, D) like {self.modalities[0]!r} (all modalities share T)"
                )
        if labels is not None and (labels.ndim != 2 or len(labels) != window):
            raise FeatureFileError(
                f"{self.file.path}: video {video_id!r}: field 'labels' has shape {labels.shape}, "
                f"expected ({window}, C)"
            )
        return self._item(video_id, length, offset, data, labels, labels is not None)


def transpose_into(out: torch.Tensor, index: int, rows: np.ndarray) -> None:
    """``out[index, :, :n] = rows.T`` (cast to ``out``'s dtype) and ``out[index, :, n:] = 0``
    for ``rows (n, D)``: one pass per item, straight into the ``(B, D, T)`` batch tensor."""
    n = rows.shape[0]
    if n:
        src = torch.from_numpy(np.ascontiguousarray(rows)).t()
        if src.dtype == out.dtype:
            # Same dtype: ATen's blocked 2-D transpose (several times faster than the generic
            # strided copy) needs a contiguous destination -- the item's slab, or a temporary.
            if n == out.shape[2]:
                out[index].copy_(src)
            else:
                out[index, :, :n].copy_(src.contiguous())
        else:  # a casting copy (float16/uint8 -> float32) is fast as it is
            out[index, :, :n].copy_(src)
    if n < out.shape[2]:
        out[index, :, n:].zero_()


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy one (TypeError when torch has none)."""
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _pad_rows(arrays: list[np.ndarray | None], steps: int, width: int, dtype: np.dtype) -> torch.Tensor:
    """``(B, steps, width)`` tensor of ``dtype`` with ``arrays[b]`` in rows ``[0, n_b)`` and
    zeros elsewhere (``None`` gives a zero item): a plain row copy per item, no transpose."""
    out = torch.empty(len(arrays), steps, width, dtype=_torch_dtype(dtype))
    view = out.numpy()
    for b, rows in enumerate(arrays):
        n = 0 if rows is None else rows.shape[0]
        if n:
            np.copyto(view[b, :n], rows, casting="safe")
        if n < steps:
            view[b, n:] = 0
    return out


def _mask(lengths: Sequence[int], steps: int) -> np.ndarray:
    """``(B, steps)`` bool, True on the first ``lengths[b]`` steps of row ``b``."""
    return np.arange(steps) < np.array(lengths)[:, None]


def _meta_columns(rows: list[tuple], labelled: Sequence[bool]) -> dict:
    """The batch meta of ``(video_id, duration, length, offset, segments)`` rows and each
    row's ``labelled``, as columns: lists of ids and segment arrays, numpy ``float32``
    durations, ``int64`` lengths and offsets and ``bool`` labelled (numpy, not
    ``torch.tensor``: several times cheaper for arrays this small; the same values: float32
    from Python floats rounds alike)."""
    video_ids, durations, lengths, offsets, segments = zip(*rows)
    return {"video_id": video_ids, "duration": np.array(durations, dtype=np.float32),
            "length": np.array(lengths, dtype=np.int64), "offset": np.array(offsets, dtype=np.int64),
            "segments": segments, LABELLED: np.array(labelled, dtype=bool)}


def collate_videos(items: list[dict], num_classes: int) -> dict:
    """Pad a list of :class:`FeatureDataset` items into a **host-layout** batch
    (``kd_detect.data.batch``): modalities ``(B, T, D_m)`` in their stored dtype, labels
    ``(B, T, C)`` in theirs (uint8; zeros when a video has none), mask ``(B, T)`` bool;
    padding is zero everywhere. When items differ in dtype the batch takes the wider one
    (``np.result_type``), so no value is rounded.
    :func:`~kd_detect.data.batch.to_model_layout` gives the ``(B, D, T)`` float32 batch."""
    if isinstance(items, ReadBatch) and items.intact():  # read in place, padding zeroed
        batch = {m: torch.from_numpy(a) for m, a in zip(items.dataset.modalities, items.arrays)}
        batch[LABELS] = torch.from_numpy(items.arrays[-1])
        mask, meta = items.mask, items.meta
    else:
        lengths = [len(next(iter(it["features"].values()))) for it in items]
        steps = max(lengths)
        batch = {}
        for m in items[0]["features"]:
            arrays = [it["features"][m] for it in items]
            dtype = np.result_type(*(a.dtype for a in arrays))
            batch[m] = _pad_rows(arrays, steps, arrays[0].shape[1], dtype)
        labels = [it[LABELS] for it in items]
        present = [a.dtype for a in labels if a is not None]
        batch[LABELS] = _pad_rows(labels, steps, num_classes,
                                  np.result_type(*present) if present else np.dtype(np.uint8))
        mask = _mask(lengths, steps)
        meta = _meta_columns([(it["video_id"], it["duration"], it["length"], it["offset"], it["segments"])
                              for it in items], [it.get(LABELLED, it[LABELS] is not None) for it in items])
    batch[MASK] = torch.from_numpy(mask)
    batch[META] = {
        "video_id": list(meta["video_id"]),
        "duration": torch.from_numpy(meta["duration"]),
        "length": torch.from_numpy(meta["length"]),
        "offset": torch.from_numpy(meta["offset"]),
        "segments": list(meta["segments"]),
        LABELLED: torch.from_numpy(meta[LABELLED]),
    }
    batch[LAYOUT] = HOST_LAYOUT
    return batch


class VideoCollate:
    """Picklable collate function bound to the number of classes."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, items: list[dict]) -> dict:
        return collate_videos(items, self.num_classes)


class EpochDistributedSampler(DistributedSampler):
    """Training sampler: a :class:`DistributedSampler` (shuffled with ``seed`` + epoch,
    Lightning calls :meth:`set_epoch`) that yields ``(index, epoch)`` so the dataset's
    crop depends on the epoch even inside persistent workers."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return iter([(int(i), epoch) for i in super().__iter__()])


class UnrepeatedDistributedSampler(DistributedSampler):
    """Evaluation sampler: rank ``r`` of ``W`` gets indices ``r, r+W, r+2W, ...`` in order,
    with no padding (ranks may get different counts). Subclassing
    :class:`DistributedSampler` keeps Lightning from replacing it with a padding one."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.total_size = len(dataset)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
