"""Training videos without labels (format subset ``unlabelled``, ``data.unlabelled_subset``):
the generator writes the same videos without annotations, ``kd-detect check`` accepts them
there only, the loader never reads their labels and marks them, the detection loss skips
them (by hand), the distillation losses read them, and every module that could not learn
from them refuses them."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from kd_detect.data.batch import LABELLED, LABELS, MASK, META, labelled_mask, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.data.format import UNLABELLED, FeatureFile
from kd_detect.data.validate import validate_file
from kd_detect.errors import FeatureFileError, UsageError
from kd_detect.modules import DetectorModule, StudentModule, TeacherModule, instantiate
from kd_detect.modules.detector import masked_bce
from tests.helpers import TINY_HEAD

EXTRA = 6


@pytest.fixture(scope="module")
def files(make_synthetic_h5):
    """(base file, the same + EXTRA labelled training videos, the same + EXTRA unlabelled videos)."""
    return (make_synthetic_h5(), make_synthetic_h5(extra_training=EXTRA),
            make_synthetic_h5(extra_training=EXTRA, extra_subset=UNLABELLED))


def test_the_generator_writes_the_ceilings_extra_videos_without_annotations(files):
    base, labelled, unlabelled = (FeatureFile(p) for p in files)
    extra = [v for v in unlabelled.video_ids if v not in base.video_ids]
    assert len(extra) == EXTRA and unlabelled.videos_in(UNLABELLED) == extra
    assert labelled.videos_in(UNLABELLED) == [] and set(extra) <= set(labelled.videos_in("training"))
    with h5py.File(files[2], "r") as h5:
        for vid in extra:
            assert "labels" not in h5["videos"][vid] and "segments" not in h5["videos"][vid]
    with h5py.File(files[1], "r") as h5_lab, h5py.File(files[2], "r") as h5_unl, h5py.File(files[0], "r") as h5_base:
        for vid in extra:  # bit for bit the ceiling's extra videos, minus their annotations
            for m in ("rgb", "flow", "pose"):
                assert np.array_equal(h5_lab["videos"][vid][m][()], h5_unl["videos"][vid][m][()])
        for vid in base.video_ids:  # and the base file's videos unchanged, labels included
            for field in ("rgb", "labels", "segments"):
                assert np.array_equal(h5_base["videos"][vid][field][()], h5_unl["videos"][vid][field][()])
    report = validate_file(files[2])
    assert report.ok, report.problems
    with pytest.raises(ValueError, match="extra_subset must be 'training' or 'unlabelled'"):
        from data_prep.synthetic import config

        config(extra_subset="testing")


def test_fewer_extra_videos_are_the_first_of_more(files, make_synthetic_h5):
    """The README's count curve (144, 288, 432 unlabelled videos) compares nested sets: a file
    with fewer extra videos holds the first ones of a file with more, bit for bit."""
    fewer = make_synthetic_h5(extra_training=EXTRA // 2, extra_subset=UNLABELLED)
    small, large = FeatureFile(fewer), FeatureFile(files[2])
    assert len(small.videos_in(UNLABELLED)) == EXTRA // 2
    assert small.videos_in(UNLABELLED) == large.videos_in(UNLABELLED)[: EXTRA // 2]
    with h5py.File(fewer, "r") as h5_small, h5py.File(files[2], "r") as h5_large:
        for vid in small.videos_in(UNLABELLED):
            for m in ("rgb", "flow", "pose"):
                assert np.array_equal(h5_small["videos"][vid][m][()], h5_large["videos"][vid][m][()])


def test_extra_unlabelled_videos_follow_a_larger_labelled_set(files, make_synthetic_h5):
    """``extra_unlabelled`` (the recipe at a larger labelled size): after the ceiling's extra
    labelled videos, more videos of the same world without annotations; the labelled part is
    the ceiling's file bit for bit, labels included, and the unlabelled videos are those the
    all-unlabelled file draws at the same positions."""
    both = FeatureFile(make_synthetic_h5(extra_training=EXTRA // 2, extra_unlabelled=EXTRA // 2))
    ceiling = FeatureFile(make_synthetic_h5(extra_training=EXTRA // 2))
    unlabelled = FeatureFile(files[2])  # EXTRA extra videos, all unlabelled
    assert both.video_ids == unlabelled.video_ids  # the same videos, in the same order
    assert both.videos_in(UNLABELLED) == unlabelled.videos_in(UNLABELLED)[EXTRA // 2:]
    assert [v for v in both.video_ids if both.subsets[v] != UNLABELLED] == ceiling.video_ids
    for vid in ceiling.video_ids:
        a, b = ceiling.record(vid), both.record(vid)
        assert a.subset == b.subset
        np.testing.assert_array_equal(a.labels, b.labels)
        for m in ("rgb", "flow", "pose"):
            np.testing.assert_array_equal(a.features[m], b.features[m])
    for vid in both.videos_in(UNLABELLED):
        a, b = unlabelled.record(vid), both.record(vid)
        assert b.labels is None
        for m in ("rgb", "flow", "pose"):
            np.testing.assert_array_equal(a.features[m], b.features[m])
    assert validate_file(both.path).ok
    from data_prep.synthetic import config

    with pytest.raises(ValueError, match="extra_unlabelled must be >= 0"):
        config(extra_unlabelled=-1)


def test_check_accepts_missing_annotations_in_subset_unlabelled_only(files, tmp_path):
    path = tmp_path / "moved.h5"
    path.write_bytes(files[2].read_bytes())
    with h5py.File(path, "a") as h5:
        vid = FeatureFile(files[2]).videos_in(UNLABELLED)[0]
        h5["videos"][vid].attrs["subset"] = "extra"  # the same video under another subset name
        h5["videos"]["syn_00000"].attrs["subset"] = UNLABELLED  # a labelled video there: still checked
        h5["videos"]["syn_00000"]["labels"][0, 0] = 2
    problems = validate_file(path).problems
    assert any(f"video {vid!r}: field 'labels' missing" in p and "belong in subset 'unlabelled'" in p for p in problems)
    assert any(f"video {vid!r}: field 'segments' missing" in p for p in problems)
    assert any("video 'syn_00000': field 'labels'" in p and "0/1" in p for p in problems), problems
    assert all(f"video {vid!r}" in p or "video 'syn_00000'" in p for p in problems), problems


def _copy_with_unlabelled(src, tmp_path, count=4):
    """The tiny file with its first ``count`` annotated training videos moved to subset ``unlabelled``,
    their labels and segments kept in the file (they must not be read)."""
    path = tmp_path / "half.h5"
    path.write_bytes(src.read_bytes())
    with h5py.File(path, "a") as h5:
        ids = [v for v in h5["videos"] if h5["videos"][v].attrs["subset"] == "training"
               and h5["videos"][v]["labels"][()].any()][:count]  # with actions a reader could leak
        for vid in ids:
            h5["videos"][vid].attrs["subset"] = UNLABELLED
    return path, ids


def test_the_loader_adds_unlabelled_videos_without_reading_their_labels(synthetic_h5, tmp_path):
    path, moved = _copy_with_unlabelled(synthetic_h5, tmp_path)
    plain = FeatureDataModule(str(path), batch_size=16, val_subset="testing")
    dm = FeatureDataModule(str(path), batch_size=16, val_subset="testing", unlabelled_subset=UNLABELLED)
    assert dm.unlabelled_videos == moved and dm.training_videos == plain.training_videos + moved
    ff = FeatureFile(path)
    rows = np.concatenate([ff.read(v, ["rgb"])["rgb"].astype(np.float64) for v in dm.training_videos])
    mean = np.asarray(dm.feature_statistics(["rgb"])["rgb"][0], dtype=np.float64)
    np.testing.assert_allclose(mean, rows.mean(0), atol=1e-4)  # the statistics include the unlabelled videos
    assert not np.allclose(np.asarray(plain.feature_statistics(["rgb"])["rgb"][0], dtype=np.float64), mean, atol=1e-4)
    batch = next(iter(dm.train_dataloader()))
    ids = list(batch[META]["video_id"])
    assert sorted(ids) == sorted(dm.training_videos)
    for b, vid in enumerate(ids):
        n = int(batch[MASK][b].sum())
        assert n == ff.lengths[vid]
        assert np.array_equal(batch["rgb"][b, :n].numpy(), ff.read(vid, ["rgb"])["rgb"])
        if vid in moved:
            assert not batch[META][LABELLED][b] and int(batch[LABELS][b].sum()) == 0
            assert len(batch[META]["segments"][b]) == 0
        else:
            assert batch[META][LABELLED][b]
            assert np.array_equal(batch[LABELS][b, :n].numpy(), ff.read(vid, ["labels"])["labels"])
    model_batch = to_model_layout(batch)
    keep = labelled_mask(model_batch)
    assert torch.equal(keep, model_batch[MASK] & model_batch[META][LABELLED][:, None])
    assert not bool(keep[[ids.index(v) for v in moved]].any())
    # without unlabelled videos every batch is labelled everywhere
    plain_batch = to_model_layout(next(iter(plain.train_dataloader())))
    assert LABELLED in plain_batch[META] and bool(plain_batch[META][LABELLED].all())
    assert torch.equal(labelled_mask(plain_batch), plain_batch[MASK])


def test_bad_unlabelled_subsets_are_refused_in_one_line(synthetic_h5, tmp_path):
    path, _ = _copy_with_unlabelled(synthetic_h5, tmp_path)
    with pytest.raises(FeatureFileError, match=r"unlabelled_subset='extra' selects no video; .*'unlabelled': 4"):
        FeatureDataModule(str(path), unlabelled_subset="extra")
    with pytest.raises(FeatureFileError, match=r"unlabelled_subset='testing' shares 4 videos .*with the training"):
        FeatureDataModule(str(path), unlabelled_subset="testing")
    for stage in ("train", "val", "test"):
        with pytest.raises(FeatureFileError, match=rf"{stage}_subset='unlabelled': subset 'unlabelled' holds videos "
                                                   "without annotations"):
            FeatureDataModule(str(path), **{f"{stage}_subset": UNLABELLED})


def _batch(labelled=(True, False, True), T=5, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(labelled)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False
    labels = (torch.rand(B, C, T, generator=g) > 0.5).float() * mask[:, None, :]
    return {"rgb": torch.randn(B, 2, T, generator=g) * mask[:, None, :], "flow": torch.randn(B, 1, T, generator=g),
            LABELS: labels, MASK: mask,
            META: {"video_id": [f"v{b}" for b in range(B)], LABELLED: torch.tensor(labelled)}}


def _model(cls=DetectorModule, **kw):
    return instantiate(cls, head=TINY_HEAD, modalities=kw.pop("modalities", ["rgb"]), num_classes=3,
                       classes=["a", "b", "c"], modality_dims={"rgb": 2, "flow": 1}, **kw)


def test_the_detection_loss_reads_the_labelled_videos_only():
    logits = torch.randn(3, 3, 5)
    batch = _batch()
    # by hand: the mean BCE over the valid steps of videos 0 (3 steps) and 2 (5 steps), 3 classes
    p = torch.sigmoid(logits)
    y = batch[LABELS]
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    want = (bce[0, :, :3].sum() + bce[2].sum()) / (8 * 3)
    model = _model()
    got = model.detection_loss(type("Out", (), {"logits": logits})(), batch)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, masked_bce(logits, y, labelled_mask(batch)))
    # a batch of unlabelled videos only: zero, with a zero gradient
    none = _batch(labelled=(False, False, False))
    x = logits.clone().requires_grad_(True)
    loss = model.detection_loss(type("Out", (), {"logits": x})(), none)
    loss.backward()
    loss = loss.detach()
    assert loss.item() == 0.0 and float(x.grad.abs().sum()) == 0.0
    # the same videos, all labelled (no meta): the plain masked BCE
    plain = {k: v for k, v in batch.items() if k != META}
    torch.testing.assert_close(model.detection_loss(type("Out", (), {"logits": logits})(), plain),
                               masked_bce(logits, y, batch[MASK]))


def _student(teacher, **kw):
    student = _model(StudentModule, teacher_dims={"t": teacher.feature_dim}, **kw)
    student._teachers["t"] = teacher  # a loaded teacher, without a checkpoint file
    return student


def test_a_student_distils_on_unlabelled_videos_whose_labels_never_count(monkeypatch):
    torch.manual_seed(0)
    teacher = _model(TeacherModule, modalities=["rgb", "flow"]).eval()
    student = _student(teacher, distill={"kd": {"class_path": "kd_detect.distill.LogitKD"}})
    monkeypatch.setattr(student, "log", lambda *a, **k: None)
    batch = _batch()
    batch["rgb"].requires_grad_(True)
    student.training_step(batch, 0).backward()
    grad = batch["rgb"].grad
    assert float(grad[1].abs().sum()) > 0  # the unlabelled video teaches through the distillation loss
    # the same student without distillation: the unlabelled video's input gets no gradient
    quiet = _student(teacher, distill={"kd": {"class_path": "kd_detect.distill.LogitKD", "init_args": {"weight": 0}}})
    monkeypatch.setattr(quiet, "log", lambda *a, **k: None)
    batch = _batch()
    batch["rgb"].requires_grad_(True)
    quiet.training_step(batch, 0).backward()
    assert float(batch["rgb"].grad[1].abs().sum()) == 0.0 and float(batch["rgb"].grad[0].abs().sum()) > 0
    # the unlabelled video's labels do not matter: changing them changes nothing
    a, b = _batch(), _batch()
    b[LABELS][1] = 1 - b[LABELS][1]
    torch.manual_seed(1)
    la = student.training_step(a, 0)
    torch.manual_seed(1)
    torch.testing.assert_close(student.training_step(b, 0), la)


def test_modules_that_cannot_learn_from_unlabelled_videos_refuse_them():
    teacher = _model(TeacherModule, modalities=["rgb", "flow"]).eval()
    videos = ["u0", "u1"]
    for model in (_model(), teacher):
        with pytest.raises(UsageError, match=rf"2 training videos without labels .*{type(model).__name__} learns "
                                             "from labels only"):
            model.check_unlabelled(videos)
        model.check_unlabelled([])  # nothing to refuse
    off = _student(teacher, distill={"kd": {"class_path": "kd_detect.distill.LogitKD", "init_args": {"weight": 0}}})
    with pytest.raises(UsageError, match="StudentModule learns from labels only"):
        off.check_unlabelled(videos)
    reads_labels = _student(teacher, distill={"atomic": {"class_path": "kd_detect.distill.AtomicContrastive",
                                                         "init_args": {"exclude_same_label": True}}})
    with pytest.raises(UsageError, match=r"distill t/atomic \(AtomicContrastive\) reads the batch's labels"):
        reads_labels.check_unlabelled(videos)
    mixed = _student(teacher, mixup=0.4, distill={"kd": {"class_path": "kd_detect.distill.LogitKD"}})
    with pytest.raises(UsageError, match="mixup=0.4 with data.unlabelled_subset"):
        mixed.check_unlabelled(videos)
    ok = _student(teacher, distill={"kd": {"class_path": "kd_detect.distill.LogitKD"}})
    ok.check_unlabelled(videos)
    assert ok.reads_unlabelled() == ["t/kd"]


def test_a_plain_fit_with_unlabelled_videos_stops_before_training(files, tmp_path, capsys):
    from kd_detect.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(Path(__file__).resolve().parents[1] / "experiments/synthetic_rgb.yaml"), f"--data.path={files[2]}",
              f"--data.unlabelled_subset={UNLABELLED}", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("kd-detect: error: data.unlabelled_subset gives 6 training videos")
    assert "DetectorModule learns from labels only" in err
    assert not (tmp_path / "best.ckpt").exists()
