"""The host/model batch layouts (``kd_detect.data.batch``): the loader's host batches keep
the stored ``(B, T, D)`` rows and dtype, and :func:`to_model_layout` turns them into
batches bit-identical to those of the former float32 ``(B, D, T)`` collate, kept here as
the reference."""

from __future__ import annotations

import mmap
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from kd_detect.data import dataset as dataset_module
from kd_detect.data.batch import LAYOUT, is_host_layout, modalities_in, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.data.dataset import HUGE_PAGE, batch_memory, collate_videos, dataset_layout
from kd_detect.data.format import VideoRecord, write_feature_file

CLASSES = ["a", "b", "c", "d"]
DIMS = (("rgb", 7), ("flow", 5))


def reference_collate(items: list[dict], num_classes: int) -> dict:
    """The collate of commit de75d2b, written plainly: every modality and the labels
    transposed and cast to float32 ``(B, D, T)`` on the host, zero padding."""
    lengths = [len(next(iter(it["features"].values()))) for it in items]
    steps = max(lengths)
    batch: dict = {}
    for m in items[0]["features"]:
        dim = items[0]["features"][m].shape[1]
        buf = torch.zeros(len(items), dim, steps)
        for b, it in enumerate(items):
            buf[b, :, : lengths[b]] = torch.from_numpy(it["features"][m].astype(np.float32).T)
        batch[m] = buf
    labels = torch.zeros(len(items), num_classes, steps)
    mask = torch.zeros(len(items), steps, dtype=torch.bool)
    for b, it in enumerate(items):
        mask[b, : lengths[b]] = True
        if it["labels"] is not None:
            labels[b, :, : lengths[b]] = torch.from_numpy(it["labels"].astype(np.float32).T)
    batch["labels"], batch["mask"] = labels, mask
    batch["meta"] = {
        "video_id": [it["video_id"] for it in items],
        "duration": torch.tensor([it["duration"] for it in items], dtype=torch.float32),
        "length": torch.tensor([it["length"] for it in items], dtype=torch.long),
        "offset": torch.tensor([it["offset"] for it in items], dtype=torch.long),
        "segments": [it["segments"] for it in items],
    }
    return batch


def assert_bit_identical(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        if key == "meta":
            assert g["video_id"] == w["video_id"]
            for f in ("duration", "length", "offset"):
                assert torch.equal(g[f], w[f]) and g[f].dtype == w[f].dtype
            for s, t in zip(g["segments"], w["segments"]):
                np.testing.assert_array_equal(s, t)
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, key
        assert g.is_contiguous(), key
        # bitwise: compare the raw bits, so -0.0 vs 0.0 or NaN payloads would show
        if g.dtype == torch.float32:
            assert torch.equal(g.view(torch.int32), w.view(torch.int32)), key
        else:
            assert torch.equal(g, w), key


def _write(path, dtype: str, unlabeled: tuple[str, ...] = ()) -> str:
    rng = np.random.default_rng(3)
    videos = []
    for i in range(7):
        steps = int(rng.integers(4, 30))
        feats = {m: (rng.standard_normal((steps, d)) * 3).astype(np.float32) for m, d in DIMS}
        feats["rgb"][0, 0] = -0.0  # signed zero must survive
        segs = np.array([[i % 4, 0.2 * steps, 0.7 * steps], [(i + 1) % 4, 0.0, 0.3 * steps]])
        videos.append(VideoRecord(f"v{i}", "training" if i < 5 else "testing", float(steps), feats, segs))
    write_feature_file(path, CLASSES, [m for m, _ in DIMS], videos, dtype=dtype)
    with h5py.File(path, "a") as h5:
        for vid in unlabeled:
            del h5["videos"][vid]["labels"]
    return str(path)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("max_steps", [None, 9])
def test_every_batch_matches_the_former_collate(tmp_path, dtype, max_steps):
    """Training (shuffled, cropped windows when max_steps is set, padding to the longest
    window) and evaluation batches; lazy and preloaded reads."""
    path = _write(tmp_path / f"{dtype}.h5", dtype)
    for preload in (False, True):
        dm = FeatureDataModule(path, val_subset="testing", batch_size=3, eval_batch_size=2, max_steps=max_steps, seed=4,
                               preload=preload)
        seen, padded = 0, False
        for stage in ("train", "val"):
            loader = dm.train_dataloader() if stage == "train" else dm.val_dataloader()
            dataset = dm.dataset(stage)
            for batch, keys in zip(loader, _keys_of(loader)):
                items = [dataset[k] for k in keys]
                # host side: the stored rows and dtype, (B, T, D); labels uint8 (B, T, C)
                assert is_host_layout(batch) and batch[LAYOUT] == "host"
                for m, dim in DIMS:
                    assert batch[m].dtype == getattr(torch, dtype) and batch[m].shape[2] == dim
                assert batch["labels"].dtype == torch.uint8 and batch["labels"].shape[2] == len(CLASSES)
                padded |= bool((~batch["mask"]).any())
                assert_bit_identical(to_model_layout(batch), reference_collate(items, len(CLASSES)))
                seen += len(items)
        assert seen == 7 and padded  # the padding path was exercised
        dm.teardown("fit")


def _keys_of(loader) -> list[list]:
    """The dataset keys of each batch of ``loader`` (its sampler, in batches)."""
    keys = list(iter(loader.sampler))
    size = loader.batch_size
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def test_missing_labels_and_mixed_dtypes(tmp_path):
    """Videos without labels give zero labels; items of different dtypes collate to the
    wider one, so nothing is rounded."""
    path = _write(tmp_path / "x.h5", "float16", unlabeled=("v1", "v3"))
    dm = FeatureDataModule(path, val_subset="testing", batch_size=7, require_labels=False)
    dataset = dm.dataset("predict")  # every video, longest first
    items = [dataset[i] for i in range(7)]
    unlabeled = [i for i, it in enumerate(items) if it["labels"] is None]
    assert len(unlabeled) == 2
    items[2]["features"] = {m: a.astype(np.float32) + np.float32(1e-4) for m, a in items[2]["features"].items()}
    host = collate_videos(items, len(CLASSES))
    assert host["rgb"].dtype == torch.float32
    assert_bit_identical(to_model_layout(host), reference_collate(items, len(CLASSES)))
    assert to_model_layout(host)["labels"][unlabeled].eq(0).all()


def test_to_model_layout_leaves_model_batches_and_its_input_alone(tmp_path):
    path = _write(tmp_path / "x.h5", "float16")
    host = next(iter(FeatureDataModule(path, val_subset="testing", batch_size=4).val_dataloader()))
    snapshot = {k: v.clone() for k, v in host.items() if isinstance(v, torch.Tensor)}
    model = to_model_layout(host)
    for k, v in snapshot.items():
        assert torch.equal(host[k], v) and host[k].dtype == v.dtype  # input unchanged
    assert LAYOUT not in model and sorted(modalities_in(model)) == ["flow", "rgb"]
    again = to_model_layout(model)  # model layout: nothing to convert
    for k in ("rgb", "flow", "labels", "mask"):
        assert again[k] is model[k]
    moved = to_model_layout(host, device="cpu")
    assert_bit_identical(moved, model)


def test_detector_converts_after_transfer(tmp_path):
    """The Lightning hook gives the heads the model layout."""
    from kd_detect.modules import DetectorModule, instantiate

    path = _write(tmp_path / "x.h5", "float16")
    dm = FeatureDataModule(path, val_subset="testing", batch_size=4)
    module = instantiate(DetectorModule, modalities=["rgb"], num_classes=len(CLASSES), classes=CLASSES,
                         modality_dims=dm.modality_dims,
                         head={"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 8, "num_layers": 1}})
    host = next(iter(dm.val_dataloader()))
    got = module.on_after_batch_transfer(host, 0)
    assert_bit_identical(got, to_model_layout(host))
    assert module(got).logits.shape == (len(host["mask"]), len(CLASSES), host["mask"].shape[1])


def test_batched_read_lands_in_the_batch_without_a_copy(tmp_path):
    """The loader's items are read into one array per field and the collate takes it as
    the batch (the same memory), with the padding rows zeroed; the per-item path gives the
    same batch."""
    path = _write(tmp_path / "x.h5", "float16")
    dm = FeatureDataModule(path, val_subset="testing", batch_size=5, max_steps=12, seed=2)
    dataset = dm.dataset("train")
    keys = [(i, 1) for i in (4, 0, 3, 1, 2)]
    items = dataset.__getitems__(keys)
    batch = collate_videos(items, len(CLASSES))
    for field in ("rgb", "flow"):
        assert np.shares_memory(batch[field].numpy(), items[0]["features"][field])
    assert np.shares_memory(batch["labels"].numpy(), items[0]["labels"])
    one_by_one = collate_videos([dataset[k] for k in keys], len(CLASSES))
    assert_bit_identical(to_model_layout(batch), to_model_layout(one_by_one))
    assert_bit_identical(to_model_layout(batch), reference_collate([dataset[k] for k in keys], len(CLASSES)))


def test_batched_read_builds_its_items_only_when_asked(tmp_path):
    """The collate of a batched read (the DataLoader's path) builds no item dicts; asked
    for, the items are those of ``__getitem__`` (a sequence: length, indexing, slicing,
    iteration), are built once, and the batch collated after that is the same memory."""
    path = _write(tmp_path / "x.h5", "float32")
    dm = FeatureDataModule(path, val_subset="testing", batch_size=5, max_steps=12, seed=2)
    dataset = dm.dataset("train")
    keys = [(i, 3) for i in (2, 4, 0, 1, 3)]
    want = [dataset[k] for k in keys]
    read = dataset.__getitems__(keys)
    batch = collate_videos(read, len(CLASSES))
    assert read._items is None  # nothing built
    assert_bit_identical(to_model_layout(batch), reference_collate(want, len(CLASSES)))
    assert len(read) == 5 and isinstance(read[1:3], list) and len(read[1:3]) == 2
    assert read[-1] is read[4] and list(read) == read.items() and read.items() is read.items()
    for got, ref in zip(read, want):
        assert got.keys() == ref.keys()
        for key in ("video_id", "duration", "length", "offset"):
            assert got[key] == ref[key], key
        np.testing.assert_array_equal(got["segments"], ref["segments"])
        np.testing.assert_array_equal(got["labels"], ref["labels"])
        for m in ("rgb", "flow"):
            assert got["features"][m].dtype == ref["features"][m].dtype
            np.testing.assert_array_equal(got["features"][m], ref["features"][m])
    assert any(len(ref["features"]["rgb"]) < 12 for ref in want)  # padding exercised
    assert any(ref["offset"] > 0 for ref in want)  # and a cropped window
    again = collate_videos(read, len(CLASSES))
    assert np.shares_memory(again["rgb"].numpy(), batch["rgb"].numpy())
    assert_bit_identical(to_model_layout(again), to_model_layout(batch))


def test_batched_read_falls_back_for_what_it_does_not_cover(tmp_path):
    """Chunked/compressed fields and missing labels take the per-item path (same batch)."""
    path = _write(tmp_path / "x.h5", "float32", unlabeled=("v2",))
    with h5py.File(path, "a") as h5:
        data = h5["videos/v0/rgb"][()]
        del h5["videos/v0/rgb"]
        h5.create_dataset("videos/v0/rgb", data=data, compression="gzip", chunks=(2, data.shape[1]))
    dm = FeatureDataModule(path, val_subset="testing", batch_size=7, require_labels=False)
    dataset = dm.dataset("predict")
    keys = list(range(7))
    items = dataset.__getitems__(keys)
    batch = collate_videos(items, len(CLASSES))
    assert not np.shares_memory(batch["rgb"].numpy(), items[0]["features"]["rgb"])
    assert_bit_identical(to_model_layout(batch), reference_collate([dataset[k] for k in keys], len(CLASSES)))


@pytest.mark.parametrize("mapped", [False, True])
def test_batch_memory_is_reused_only_once_released(tmp_path, monkeypatch, mapped):
    """The pool never hands out memory a batch, an item or a view still refers to, and
    reuses it once they are gone (so memory stays bounded) -- for ``np.empty`` buffers and
    for the huge-page mappings of :func:`batch_memory` (here for every buffer)."""
    if mapped:
        monkeypatch.setattr(dataset_module, "HUGE_PAGE", 1)
    path = _write(tmp_path / "x.h5", "float32")
    dataset = FeatureDataModule(path, val_subset="testing", batch_size=3).dataset("train")
    fields = 3  # rgb, flow, labels
    held = collate_videos(dataset.__getitems__([0, 1, 2]), len(CLASSES))
    kept = {k: held[k].clone() for k in ("rgb", "flow", "labels")}
    items = dataset.__getitems__([3, 4])  # items alone also hold their buffers
    item_rows = items[0]["features"]["rgb"].copy()
    for _ in range(5):
        other = collate_videos(dataset.__getitems__([4, 3, 1]), len(CLASSES))
        for k in kept:
            assert not np.shares_memory(other[k].numpy(), held[k].numpy())
        del other
    for k, v in kept.items():
        assert torch.equal(held[k], v)  # never overwritten
    np.testing.assert_array_equal(items[0]["features"]["rgb"], item_rows)
    # held batch + held items + one batch in flight, each field once: bounded, reused
    assert len(dataset._pool) == 3 * fields
    assert all(_is_mapping(flat) == mapped for flat in dataset._pool)
    del held, items
    for _ in range(5):
        collate_videos(dataset.__getitems__([0, 1, 2]), len(CLASSES))
    assert len(dataset._pool) == 3 * fields


def _is_mapping(flat: np.ndarray) -> bool:
    """True when ``flat`` is an array over an ``mmap`` (directly or through a memoryview)."""
    return isinstance(getattr(flat.base, "obj", flat.base), mmap.mmap)


def test_batch_memory_is_whole_huge_pages_private_to_the_process():
    """Large batch buffers: writable, whole 2 MiB pages, the base of their views (what the
    pool counts references on), and copy-on-write in a forked process (a DataLoader
    worker's writes never reach the parent's batches)."""
    small = batch_memory(1000)
    assert small.nbytes >= 1000 and not _is_mapping(small)
    flat = batch_memory(HUGE_PAGE + 1)
    assert _is_mapping(flat) and flat.nbytes == 2 * HUGE_PAGE and flat.flags.writeable
    view = flat[:HUGE_PAGE + 1].view(np.uint8)[1:].reshape(HUGE_PAGE // 4, 4)
    assert view.base is flat
    flat[:] = 7
    pid = os.fork()
    if pid == 0:  # the child writes everything and leaves at once
        flat[:] = 1
        os._exit(0 if int(flat.sum()) == flat.nbytes else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(np.count_nonzero(flat != 7)) == 0


def test_collate_copies_items_changed_after_the_batched_read(tmp_path):
    """A batched read's arrays are the batch only while every item holds the rows read
    into them: an item given other rows is collated from what it holds."""
    path = _write(tmp_path / "x.h5", "float32")
    dataset = FeatureDataModule(path, val_subset="testing", batch_size=3).dataset("train")
    items = dataset.__getitems__([0, 1, 2])
    items[1]["features"]["flow"] = items[1]["features"]["flow"] + np.float32(1.0)
    batch = collate_videos(items, len(CLASSES))
    assert not np.shares_memory(batch["rgb"].numpy(), items[0]["features"]["rgb"])
    assert_bit_identical(to_model_layout(batch), reference_collate(list(items), len(CLASSES)))
    n = len(items[1]["features"]["flow"])
    np.testing.assert_array_equal(batch["flow"][1, :n].numpy(), items[1]["features"]["flow"])


def test_batched_read_refuses_rows_beyond_the_mapped_file(tmp_path, monkeypatch):
    """A video whose bytes lie beyond the mapping (a file shorter than its datasets say)
    takes the per-item read, which reads or reports it; nothing past the end is copied."""
    path = _write(tmp_path / "x.h5", "float32")
    dataset = FeatureDataModule(path, val_subset="testing", batch_size=3).dataset("train")
    whole = dataset._mapped()
    assert whole is not None and len(whole) == Path(path).stat().st_size
    layout = dataset_layout(dataset.file.h5, f"videos/{dataset.video_ids[2]}/flow")
    monkeypatch.setattr(dataset, "_map", whole[: layout.offset + 8])  # ends inside video 2's flow
    assert dataset._rows == {}
    items = dataset.__getitems__([0, 1])
    assert type(items) is not list  # videos 0 and 1 lie inside: the batched read
    items = dataset.__getitems__([0, 2])
    assert type(items) is list  # item by item
    assert_bit_identical(to_model_layout(collate_videos(items, len(CLASSES))),
                         reference_collate([dataset[0], dataset[2]], len(CLASSES)))


def test_a_pickled_dataset_maps_the_file_in_its_own_process(tmp_path):
    """What a DataLoader worker gets: no pool and no mapping of the parent's; its batches
    are the parent's."""
    path = _write(tmp_path / "x.h5", "float16")
    dataset = FeatureDataModule(path, val_subset="testing", batch_size=3).dataset("train")
    want = collate_videos(dataset.__getitems__([2, 0, 1]), len(CLASSES))
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._map is None and copy._pool == [] and copy._rows == {}
    copy._map_key = (-1,)  # as in another process: map anew
    got = collate_videos(copy.__getitems__([2, 0, 1]), len(CLASSES))
    assert copy._map is not None and copy._map is not dataset._map
    assert_bit_identical(to_model_layout(got), to_model_layout(want))


def test_a_file_replaced_at_the_same_path_is_read_anew(tmp_path):
    """An atomic replacement of the file (what every kd_detect writer does) while a dataset
    lives: once the handle is reopened, batches come from the new file, not the old mapping."""
    path = _write(tmp_path / "x.h5", "float32")
    dataset = FeatureDataModule(path, val_subset="testing", batch_size=3).dataset("train")
    old = collate_videos(dataset.__getitems__([0, 1, 2]), len(CLASSES))
    with h5py.File(path) as h5:
        videos = {v: {m: h5[f"videos/{v}/{m}"][()] for m in ("rgb", "flow")} for v in h5["videos"]}
        records = [VideoRecord(v, h5[f"videos/{v}"].attrs["subset"], float(h5[f"videos/{v}"].attrs["duration"]),
                               {m: -a for m, a in feats.items()}, h5[f"videos/{v}/segments"][()])
                   for v, feats in videos.items()]
    write_feature_file(path, CLASSES, [m for m, _ in DIMS], records, dtype="float32")
    dataset.file.close()
    new = collate_videos(dataset.__getitems__([0, 1, 2]), len(CLASSES))
    assert torch.equal(new["rgb"], -old["rgb"]) and torch.equal(new["labels"], old["labels"])
    assert_bit_identical(to_model_layout(new), reference_collate([dataset[k] for k in (0, 1, 2)], len(CLASSES)))
