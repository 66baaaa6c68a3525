"""FeatureDataModule, FeatureDataset, collate and samplers (DESIGN.md §2, §4, §5)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from pytorch_lightning import seed_everything

from kd_detect.data.batch import modalities_in, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule, fixed_share
from kd_detect.data.dataset import UnrepeatedDistributedSampler, crop_offset
from kd_detect.data.format import FeatureFile, FeatureFileError


def _batches(loader) -> list[dict]:
    """The loader's batches in model layout (what the heads see)."""
    return [to_model_layout(b) for b in loader]


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if k == "meta":
                assert x[k]["video_id"] == y[k]["video_id"]
                for f in ("duration", "length", "offset"):
                    assert torch.equal(x[k][f], y[k][f])
                for s, t in zip(x[k]["segments"], y[k]["segments"]):
                    np.testing.assert_array_equal(s, t)
            else:
                assert torch.equal(x[k], y[k]), k


def test_header_attributes(synthetic_h5):
    dm = FeatureDataModule(str(synthetic_h5), modalities=["rgb", "pose"])
    assert dm.num_classes == 6 and dm.classes == FeatureFile(synthetic_h5).classes
    assert dm.modality_dims == {"rgb": 16, "pose": 8}
    assert isinstance(dm.feature_file, FeatureFile)
    assert FeatureDataModule(str(synthetic_h5)).modality_dims == {"rgb": 16, "flow": 8, "pose": 8}


def test_eval_batches_shapes_padding_and_content(synthetic_h5):
    dm = FeatureDataModule(str(synthetic_h5), batch_size=2, eval_batch_size=3, max_steps=8)
    ff = FeatureFile(synthetic_h5)
    batches = _batches(dm.test_dataloader())
    assert [len(b["mask"]) for b in batches] == [3, 1]  # 4 testing videos
    seen = []
    for batch in batches:
        assert sorted(modalities_in(batch)) == ["flow", "pose", "rgb"]
        bsz, steps = batch["mask"].shape
        lengths = batch["meta"]["length"]
        assert steps == int(lengths.max())  # padded to the longest, whole videos despite max_steps
        assert batch["mask"].dtype == torch.bool and batch["labels"].dtype == torch.float32
        assert batch["labels"].shape == (bsz, 6, steps)
        assert torch.equal(batch["mask"].sum(1), lengths) and batch["meta"]["offset"].eq(0).all()
        assert batch["meta"]["duration"].dtype == torch.float32 and lengths.dtype == torch.long
        for m, dim in dm.modality_dims.items():
            assert batch[m].shape == (bsz, dim, steps) and batch[m].dtype == torch.float32
            assert batch[m].is_contiguous()
        for b, vid in enumerate(batch["meta"]["video_id"]):
            n = int(lengths[b])
            rec = ff.record(vid)
            for m in dm.modality_dims:
                np.testing.assert_array_equal(batch[m][b, :, :n].numpy(), rec.features[m].astype(np.float32).T)
                assert batch[m][b, :, n:].eq(0).all()
            np.testing.assert_array_equal(batch["labels"][b, :, :n].numpy(), rec.labels.T)
            assert batch["labels"][b, :, n:].eq(0).all() and not batch["mask"][b, n:].any()
            np.testing.assert_array_equal(batch["meta"]["segments"][b], rec.segments)
            assert float(batch["meta"]["duration"][b]) == pytest.approx(rec.duration)
            seen.append((vid, n))
    assert sorted(v for v, _ in seen) == sorted(ff.videos_in("testing"))
    assert [n for _, n in seen] == sorted((n for _, n in seen), reverse=True)  # longest first


def test_training_crops_are_file_slices(synthetic_h5):
    max_steps = 32
    dm = FeatureDataModule(str(synthetic_h5), modalities=["rgb"], batch_size=4, max_steps=max_steps, seed=5)
    ff = FeatureFile(synthetic_h5)
    loader = dm.train_dataloader()
    offsets = {}
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        ids = []
        for batch in map(to_model_layout, loader):
            assert batch["mask"].shape[1] <= max_steps
            for b, vid in enumerate(batch["meta"]["video_id"]):
                length, offset = int(batch["meta"]["length"][b]), int(batch["meta"]["offset"][b])
                n = int(batch["mask"][b].sum())
                assert n == min(length, max_steps) and 0 <= offset <= length - n
                window = ff.read(vid, ["rgb", "labels"], offset, offset + n)
                np.testing.assert_array_equal(batch["rgb"][b, :, :n].numpy(), window["rgb"].astype(np.float32).T)
                np.testing.assert_array_equal(batch["labels"][b, :, :n].numpy(), window["labels"].T)
                offsets[(epoch, vid)] = offset
                ids.append(vid)
        assert sorted(ids) == sorted(ff.videos_in("training"))  # each training video once per epoch
    long_videos = [v for v in ff.videos_in("training") if ff.lengths[v] > max_steps]
    assert len(long_videos) >= 3
    assert any(offsets[(0, v)] != offsets[(1, v)] for v in long_videos)  # new crop each epoch
    # reproducible: derived from (seed, epoch, index) only
    dataset = dm.dataset("train")
    for epoch in (0, 1):
        for index, vid in enumerate(dataset.video_ids):
            assert offsets[(epoch, vid)] == crop_offset(5, epoch, index, ff.lengths[vid], max_steps)


def test_shuffle_depends_on_seed_and_epoch(synthetic_h5):
    def order(seed, epoch):
        loader = FeatureDataModule(str(synthetic_h5), batch_size=16, seed=seed).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))["meta"]["video_id"]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


def test_default_seed_follows_the_fits_seed(synthetic_h5, monkeypatch):
    """``seed=None`` is the fit's ``seed_everything`` (PL_GLOBAL_SEED, read when the training
    data are built), so two training seeds see the videos in different orders; an explicit
    seed wins; unseeded is 0."""

    def first_batch(**kw):
        loader = FeatureDataModule(str(synthetic_h5), batch_size=16, **kw).train_dataloader()
        loader.sampler.set_epoch(0)
        return next(iter(loader))["meta"]["video_id"]

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert FeatureDataModule(str(synthetic_h5)).seed == 0
    unseeded = first_batch()
    assert unseeded == first_batch(seed=0)
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test
    seed_everything(3)  # what `kd-detect fit --seed_everything=3` calls before building the data
    dm = FeatureDataModule(str(synthetic_h5))
    assert dm.seed == 3 and dm.train_dataloader().sampler.seed == 3
    assert first_batch() == first_batch(seed=3) != unseeded
    assert first_batch(seed=0) == unseeded  # explicit wins over the fit's seed


def test_ranks_train_in_rank_zeros_order(synthetic_h5, monkeypatch):
    """Under DDP the default seed is rank zero's (broadcast once, at setup("fit")), so ranks
    that seeded apart still split one shuffled order; an explicit seed is never replaced, and
    one process needs no broadcast."""
    calls = []

    class Strategy:
        def broadcast(self, obj, src=0):
            calls.append((obj, src))
            return 11  # rank zero's seed

    monkeypatch.setenv("PL_GLOBAL_SEED", "4")  # this rank's own
    dm = FeatureDataModule(str(synthetic_h5))
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, strategy=Strategy())
    dm.setup("fit")
    assert calls == [(4, 0)] and dm.seed == 11
    assert dm.train_dataloader().sampler.seed == 11
    explicit = FeatureDataModule(str(synthetic_h5), seed=2)
    explicit.trainer = SimpleNamespace(world_size=2, global_rank=1, strategy=Strategy())
    explicit.setup("fit")
    alone = FeatureDataModule(str(synthetic_h5))
    alone.trainer = SimpleNamespace(world_size=1, global_rank=0, strategy=Strategy())
    alone.setup("fit")
    assert len(calls) == 1 and explicit.seed == 2 and alone.seed == 4


def test_workers_and_preload_give_identical_batches(synthetic_h5):
    def run(**kw):
        dm = FeatureDataModule(str(synthetic_h5), batch_size=3, max_steps=20, seed=1, **kw)
        out = []
        train = dm.train_dataloader()
        for epoch in (0, 1):
            train.sampler.set_epoch(epoch)
            out += _batches(train)
        out += _batches(dm.val_dataloader())
        dm.teardown("fit")
        return out

    lazy = run()
    _assert_same_batches(lazy, run(num_workers=2))
    _assert_same_batches(lazy, run(preload=True))


def test_unrepeated_sampler_partitions_without_padding():
    for n in (1, 5, 7, 10):
        data = list(range(n))
        for world in range(1, 5):
            parts = [list(UnrepeatedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)]
            assert sorted(i for p in parts for i in p) == data  # every video exactly once
            assert [len(UnrepeatedDistributedSampler(data, world, r)) for r in range(world)] == list(map(len, parts))
            assert parts[0] == data[0::world]
            if n % world:
                assert len({len(p) for p in parts}) == 2  # uneven counts, no padding


def test_samplers_follow_attached_trainer(synthetic_h5):
    dm = FeatureDataModule(str(synthetic_h5), batch_size=2)
    dm.trainer = SimpleNamespace(world_size=3, global_rank=1)
    val = dm.val_dataloader()
    assert isinstance(val.sampler, UnrepeatedDistributedSampler)
    assert (val.sampler.num_replicas, val.sampler.rank, len(val.sampler)) == (3, 1, 1)  # videos 1 of 0..3
    train = dm.train_dataloader()
    assert isinstance(train.sampler, torch.utils.data.DistributedSampler)
    assert (train.sampler.num_replicas, train.sampler.rank, train.sampler.shuffle) == (3, 1, True)
    assert len(train.sampler) == 4  # 12 training videos / 3


def test_predict_without_labels(synthetic_h5, tmp_path):
    path = tmp_path / "nolabels.h5"
    path.write_bytes(synthetic_h5.read_bytes())
    with h5py.File(path, "a") as h5:
        for group in h5["videos"].values():
            del group["labels"]
            group.attrs["subset"] = "extra"
    dm = FeatureDataModule(str(path), modalities=["rgb"], require_labels=False, batch_size=5)
    batches = _batches(dm.predict_dataloader())
    assert sum(len(b["mask"]) for b in batches) == 16  # predict_subset=None: every video
    assert all(b["labels"].eq(0).all() and b["labels"].shape[1] == 6 for b in batches)
    with pytest.raises(FeatureFileError, match=r"train_subset='training' selects no video.*'extra': 16"):
        dm.train_dataloader()
    subsets = dict(train_subset="extra", val_subset="extra", test_subset="extra")
    # validated up front (the rules of `kd-detect check`) ...
    with pytest.raises(FeatureFileError, match=r"nolabels\.h5: video 'syn_\d+': field 'labels' missing.*"
                                                 r"belong in subset 'unlabelled'"):
        FeatureDataModule(str(path), modalities=["rgb"], **subsets)
    # ... and, with the check skipped, still refused when the data are read
    strict = FeatureDataModule(str(path), modalities=["rgb"], validate=False, **subsets)
    with pytest.raises(FeatureFileError, match=r"nolabels\.h5: video 'syn_\d+': field 'labels' missing"):
        next(iter(strict.test_dataloader()))


def test_subset_lists(synthetic_h5):
    dm = FeatureDataModule(str(synthetic_h5), val_subset=["training", "validation", "testing"], batch_size=16)
    assert len(next(iter(dm.val_dataloader()))["mask"]) == 16


def test_clear_errors(synthetic_h5, tmp_path):
    with pytest.raises(FeatureFileError, match=r"modalities \['depth'\] requested.*\['rgb', 'flow', 'pose'\]"):
        FeatureDataModule(str(synthetic_h5), modalities=["rgb", "depth"])
    with pytest.raises(FeatureFileError, match=r"val_subset='val' selects no video.*'testing': 4.*'training': 10"):
        FeatureDataModule(str(synthetic_h5), val_subset="val")
    missing = tmp_path / "data" / "charades.h5"
    with pytest.raises(FeatureFileError, match=r"charades\.h5: no such feature file.*make data DATASET=charades"):
        FeatureDataModule(str(missing))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5.create_dataset("x", data=np.zeros(3))
    with pytest.raises(FeatureFileError, match=r"other\.h5: root attr 'kd_detect_format' missing"):
        FeatureDataModule(str(other))
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(FeatureFileError, match=r"text\.h5: not a readable HDF5"):
        FeatureDataModule(str(text))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        FeatureDataModule(str(synthetic_h5), batch_size=0)


def test_lightning_keeps_samplers_and_sets_epoch(synthetic_h5):
    """Under a real Trainer: our samplers stay, set_epoch reaches the training sampler
    (new crops each epoch), predict works with Lightning's re-instantiated loader."""
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Conv1d(16, 6, 1)
            self.offsets: dict[int, list[int]] = {}

        def on_after_batch_transfer(self, batch, _):  # the batch contract: host -> model layout
            return to_model_layout(batch)

        def training_step(self, batch, _):
            self.offsets.setdefault(self.current_epoch, []).extend(batch["meta"]["offset"].tolist())
            return self.layer(batch["rgb"]).mean()

        def validation_step(self, batch, _):
            assert batch["meta"]["offset"].eq(0).all()

        def predict_step(self, batch, _):
            return batch["meta"]["video_id"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = FeatureDataModule(str(synthetic_h5), modalities=["rgb"], batch_size=4, max_steps=16)
    model = Probe()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert isinstance(trainer.train_dataloader.sampler, torch.utils.data.DistributedSampler)
    assert sorted(model.offsets) == [0, 1] and model.offsets[0] != model.offsets[1]
    ids = [v for batch in trainer.predict(model, datamodule=dm) for v in batch]
    assert sorted(ids) == sorted(FeatureFile(synthetic_h5).video_ids)


def test_bad_fields_give_clear_errors(synthetic_h5, tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(synthetic_h5.read_bytes())
    ff = FeatureFile(path)
    long_first = sorted(ff.videos_in("testing"), key=lambda v: -ff.lengths[v])
    a, b = long_first[0], long_first[1]
    with h5py.File(path, "a") as h5:
        del h5[f"videos/{a}/flow"]
        h5.create_group(f"videos/{a}/flow")
        flow = h5[f"videos/{b}/flow"][()]
        del h5[f"videos/{b}/flow"]
        h5.create_dataset(f"videos/{b}/flow", data=flow[:-3])
    # refused up front (the rules of `kd-detect check`) ...
    with pytest.raises(FeatureFileError, match=rf"broken\.h5: video '{a}': modality 'flow' must be a 2-D"):
        FeatureDataModule(str(path), eval_batch_size=1)
    # ... and by the reader when the check is skipped
    dm = FeatureDataModule(str(path), eval_batch_size=1, validate=False)
    dataset = dm.dataset("test")
    assert dataset.video_ids[:2] == [a, b]
    with pytest.raises(FeatureFileError, match=rf"broken\.h5: video '{a}': field 'flow' is not a dataset"):
        dataset[0]
    with pytest.raises(FeatureFileError, match=rf"broken\.h5: video '{b}': modality 'flow' has shape \(\d+, 8\).*share T"):
        dataset[1]
    rgb_only = FeatureDataModule(str(path), modalities=["rgb"], validate=False).dataset("test")
    assert rgb_only[0]["features"]["rgb"].shape == (ff.lengths[a], 16)


def test_package_exports_lazily():
    import kd_detect.data as data

    assert data.FeatureDataModule is FeatureDataModule
    assert data.UnrepeatedDistributedSampler is UnrepeatedDistributedSampler
    with pytest.raises(AttributeError):
        data.NoSuchThing


def test_train_fraction_is_a_fixed_nested_share(make_synthetic_h5):
    """``train_fraction`` keeps ceil(f * n) training videos, the same whatever the seed,
    nested across fractions, and leaves validation / test untouched."""
    path = str(make_synthetic_h5(videos=40))
    full = FeatureDataModule(path, val_subset="validation")
    train_ids = full.dataset("train").video_ids
    shares = {}
    for fraction in (0.25, 0.5, 1.0):
        dm = FeatureDataModule(path, val_subset="validation", train_fraction=fraction, seed=3)
        ids = dm.dataset("train").video_ids
        assert len(ids) == math.ceil(fraction * len(train_ids))
        assert ids == [v for v in train_ids if v in set(ids)]  # original order kept
        assert dm.dataset("val").video_ids == full.dataset("val").video_ids
        assert dm.dataset("test").video_ids == full.dataset("test").video_ids
        assert FeatureDataModule(path, train_fraction=fraction, seed=9).dataset("train").video_ids == ids
        shares[fraction] = set(ids)
        seen = {vid for batch in dm.train_dataloader() for vid in batch["meta"]["video_id"]}
        assert seen == set(ids)  # the loader serves exactly the share
    assert shares[0.25] < shares[0.5] < shares[1.0]
    assert len(fixed_share(["only"], 0.01)) == 1


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_train_fraction_out_of_range_is_refused(synthetic_h5, fraction):
    with pytest.raises(ValueError, match="train_fraction must be in"):
        FeatureDataModule(str(synthetic_h5), train_fraction=fraction)
