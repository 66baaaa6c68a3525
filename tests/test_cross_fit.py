"""Cross-fitted teachers: the folds of the data layer, the training videos a checkpoint
records, the routing of each video to a fold teacher that never saw it, and the student
and teacher cache that use it (kd_detect.modules.cross_fit)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from kd_detect.apps.cache_teacher import main as cache_teacher
from kd_detect.data.batch import META, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule, fold_of
from kd_detect.data.format import FeatureFileError, VideoRecord, write_feature_file
from kd_detect.data.teacher_cache import TeacherCache
from kd_detect.modules import StudentModule, TeacherCompatibilityError, TeacherModule, instantiate
from kd_detect.modules.cross_fit import CrossFittedTeacher, combined_sha256
from kd_detect.modules.detector import TRAINING_SEED, TRAINING_VIDEOS
from kd_detect.modules.loading import file_sha256, load_detector
from tests.helpers import TINY_HEAD


def _write(path, n_train=14, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n_train + n_test):
        T = int(rng.integers(10, 24))
        feats = {"rgb": rng.standard_normal((T, 6)).astype(np.float32),
                 "flow": rng.standard_normal((T, 4)).astype(np.float32)}
        segs = np.array([[i % 3, 1.0, T / 2.0]])
        videos.append(VideoRecord(f"v{i:02d}", "training" if i < n_train else "testing", float(T), feats, segs))
    return write_feature_file(path, ["a", "b", "c"], ["rgb", "flow"], videos, dtype="float32")


def _trainer(**kw) -> pl.Trainer:
    kw.setdefault("max_epochs", 1)
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


def _fit_teacher(data, out, seed, **data_kw):
    dm = FeatureDataModule(str(data), batch_size=4, **data_kw)
    pl.seed_everything(seed)
    teacher = instantiate(TeacherModule, head=TINY_HEAD, modalities=["rgb", "flow"], num_classes=dm.num_classes,
                          classes=dm.classes, modality_dims=dm.modality_dims, lr=1e-2)
    trainer = _trainer()
    trainer.fit(teacher, datamodule=dm)
    trainer.save_checkpoint(out)
    return out, dm


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Two fold teachers (``folds=2``) and one teacher on every training video."""
    root = tmp_path_factory.mktemp("crossfit")
    data = _write(root / "d.h5")
    ckpts, dms = [], []
    for k in range(2):
        ckpt, dm = _fit_teacher(data, root / f"fold{k}.ckpt", seed=k, val_subset="testing", folds=2, fold=k)
        ckpts.append(ckpt)
        dms.append(dm)
    full, full_dm = _fit_teacher(data, root / "full.ckpt", seed=5, val_subset="testing")
    return {"root": root, "data": data, "ckpts": ckpts, "dms": dms, "full": full, "train": full_dm.training_videos}


# --------------------------------------------------------------------------- data: folds
def test_fold_of_is_the_sha1_of_the_id_modulo_k_and_the_folds_partition_training(folds):
    for v in ("v00", "syn_00017", "Charades/ABC12"):
        assert fold_of(v, 4) == int(hashlib.sha1(v.encode()).hexdigest(), 16) % 4
        assert fold_of(v, 1) == 0
    train = folds["train"]
    assert len(train) == 14
    kept = [set(dm.training_videos) for dm in folds["dms"]]
    held = [set(train) - k for k in kept]
    for k in range(2):
        assert held[k] == {v for v in train if fold_of(v, 2) == k}  # exactly fold k left out
        assert held[k] and kept[k]  # both folds non-empty on this file
    assert held[0] | held[1] == set(train) and not held[0] & held[1]
    dm = folds["dms"][0]
    dm.setup("fit")
    assert dm.dataset("val").video_ids == FeatureDataModule(str(folds["data"]), val_subset="testing").dataset(
        "val").video_ids  # validation untouched


@pytest.mark.parametrize("kw", [{"folds": 0}, {"folds": 2, "fold": 2}, {"folds": 3, "fold": -1}])
def test_invalid_folds_are_refused(folds, kw):
    with pytest.raises(ValueError, match="folds must be >= 1 and fold in"):
        FeatureDataModule(str(folds["data"]), **kw)


def test_a_fold_that_holds_every_training_video_is_refused_naming_the_file(tmp_path):
    data = _write(tmp_path / "one.h5", n_train=1, n_test=2)
    k = fold_of("v00", 2)
    with pytest.raises(FeatureFileError, match=r"one\.h5.*folds=2, fold=%d leaves no training video" % k):
        FeatureDataModule(str(data), val_subset="testing", folds=2, fold=k)


# ------------------------------------------------------- checkpoints record their videos
def test_a_checkpoint_records_the_videos_its_fit_trained_on(folds):
    for ckpt, dm in zip(folds["ckpts"], folds["dms"]):
        raw = torch.load(ckpt, map_location="cpu", weights_only=False)
        assert raw[TRAINING_VIDEOS] == sorted(dm.training_videos)
        assert load_detector(ckpt).training_videos == sorted(dm.training_videos)


def test_a_checkpoint_records_the_seed_its_fit_started_from(folds):
    for k, ckpt in enumerate(folds["ckpts"]):  # fold teacher k was fitted after seed_everything(k)
        assert torch.load(ckpt, map_location="cpu", weights_only=False)[TRAINING_SEED] == k
        assert load_detector(ckpt).seed == k


# --------------------------------------------------------------------------- routing
def _fold_teachers(folds):
    return [load_detector(c) for c in folds["ckpts"]], [str(c) for c in folds["ckpts"]]


def test_each_video_goes_to_the_first_teacher_that_did_not_train_on_it(folds):
    teacher = CrossFittedTeacher(*_fold_teachers(folds))
    for v in folds["train"]:
        assert teacher.route(v) == fold_of(v, 2)  # fold teacher k left out fold k
    assert teacher.route("v16") == 0  # a test video: no teacher saw it, the first reads it
    both = CrossFittedTeacher([load_detector(folds["full"]), load_detector(folds["ckpts"][0])], ["full", "fold0"])
    seen_by_all = [v for v in folds["train"] if fold_of(v, 2) == 1]  # in full and in fold teacher 0
    assert both.route(seen_by_all[0]) is None
    with pytest.raises(TeacherCompatibilityError, match=rf"'{seen_by_all[0]}' \({len(seen_by_all)} of 14\).*"
                                                        "every fold teacher"):
        both.check_covers(folds["train"])


def test_the_outputs_are_each_videos_routed_teacher_on_the_same_batch(folds):
    """Against a naive reference: every teacher on the whole batch, row i taken from the
    teacher video i is routed to (so a wrong route, a wrong scatter, or rows that influence
    each other fail it)."""
    teachers, sources = _fold_teachers(folds)
    crossed = CrossFittedTeacher(teachers, sources).eval()
    dm = FeatureDataModule(str(folds["data"]), batch_size=8, val_subset="testing")
    dm.setup("fit")
    routes_seen = set()
    with torch.no_grad():
        for batch in map(to_model_layout, dm.train_dataloader()):
            out = crossed(batch)
            full = [t(batch) for t in teachers]
            for i, v in enumerate(batch[META]["video_id"]):
                k = fold_of(v, 2)
                routes_seen.add(k)
                n = int(batch["mask"][i].sum())
                torch.testing.assert_close(out.features[i, :, :n], full[k].features[i, :, :n], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(out.logits[i, :, :n], full[k].logits[i, :, :n], rtol=1e-5, atol=1e-6)
            assert not torch.allclose(full[0].logits, full[1].logits)  # the teachers differ: routing matters
    assert routes_seen == {0, 1}


def test_fold_teachers_must_agree_and_record_their_videos(folds, tmp_path):
    teachers, sources = _fold_teachers(folds)
    with pytest.raises(TeacherCompatibilityError, match="at least 2 fold teachers"):
        CrossFittedTeacher(teachers[:1], sources[:1])
    other = instantiate(TeacherModule, head={"class_path": TINY_HEAD["class_path"],
                                             "init_args": {**TINY_HEAD.get("init_args", {}), "hidden": 5}},
                        modalities=["rgb", "flow"], num_classes=3, classes=["a", "b", "c"],
                        modality_dims={"rgb": 6, "flow": 4})
    other.training_videos = ["v00"]
    with pytest.raises(TeacherCompatibilityError, match="differ in their feature dim"):
        CrossFittedTeacher([teachers[0], other], [sources[0], "other.ckpt"])
    unknown = load_detector(folds["ckpts"][1])
    unknown.training_videos = None  # a checkpoint written before kd_detect recorded them
    with pytest.raises(TeacherCompatibilityError, match=r"fold1\.ckpt: the checkpoint does not record the videos"):
        CrossFittedTeacher([teachers[0], unknown], sources)


# ------------------------------------------------------------------ student and cache
def _student(folds, dm, **kw):
    kw.setdefault("teachers", {"t": [str(c) for c in folds["ckpts"]]})
    kw.setdefault("distill", {"g": {"class_path": "kd_detect.distill.GlobalContextualRelation",
                                    "init_args": {"weight": 1.0}},
                              "kd": {"class_path": "kd_detect.distill.LogitKD", "init_args": {"weight": 1.0}}})
    return instantiate(StudentModule, head=TINY_HEAD, modalities=["rgb"], num_classes=dm.num_classes,
                       classes=dm.classes, modality_dims=dm.modality_dims, lr=1e-2, **kw)


def test_a_student_with_a_list_of_teachers_reads_the_cross_fitted_teacher_and_trains_frozen_from_it(folds):
    dm = FeatureDataModule(str(folds["data"]), batch_size=4, val_subset="testing")
    pl.seed_everything(0)
    student = _student(folds, dm)
    teacher = student.teachers["t"]
    assert isinstance(teacher, CrossFittedTeacher)
    assert teacher.sha256 == combined_sha256([file_sha256(c) for c in folds["ckpts"]])
    dm.setup("fit")
    batch = to_model_layout(next(iter(dm.train_dataloader())))
    with torch.no_grad():
        got = student.teacher_outputs("t", batch)
        want = teacher(batch)
    torch.testing.assert_close(got.logits, want.logits)
    before = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("head.")}
    _trainer(max_epochs=2).fit(student, datamodule=dm)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items() if k in before)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_a_student_whose_training_videos_every_teacher_saw_is_refused_before_training(folds):
    dm = FeatureDataModule(str(folds["data"]), batch_size=4, val_subset="testing")
    student = _student(folds, dm, teachers={"t": [str(folds["full"]), str(folds["ckpts"][0])]})
    with pytest.raises(TeacherCompatibilityError, match="cross-fitted teacher 't': training video"):
        _trainer().fit(student, datamodule=dm)


def test_the_cache_of_a_cross_fitted_teacher_gives_the_live_losses(folds, tmp_path):
    cache = tmp_path / "cache.h5"
    assert cache_teacher(["--ckpt", *map(str, folds["ckpts"]), "--data", str(folds["data"]), "--out", str(cache)]) == 0
    dm = FeatureDataModule(str(folds["data"]), batch_size=4, val_subset="testing")
    torch.manual_seed(0)
    live = _student(folds, dm).eval()
    # the list of checkpoints with the cache: accepted only with the list's combined identity
    cached = _student(folds, dm, teacher_caches={"t": str(cache)})
    cached.load_state_dict(live.state_dict())
    cached.eval()
    assert not cached.teachers
    dm.setup("fit")
    for batch in map(to_model_layout, dm.train_dataloader()):
        out = live(batch)
        a, b = live.distillation_losses(out, batch), cached.distillation_losses(out, batch)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(FeatureFileError, match="stale teacher cache"):  # the folds in another order
        _student(folds, dm, teachers={"t": [str(c) for c in reversed(folds["ckpts"])]},
                 teacher_caches={"t": str(cache)})


# ------------------------------------------------------------- one feature basis or not
def _reseeded(ckpt, out, seed):
    """``ckpt`` as if its fit had started from ``seed`` (``None``: not recorded)."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    raw.pop(TRAINING_SEED, None)
    if seed is not None:
        raw[TRAINING_SEED] = seed
    torch.save(raw, out)
    return str(out)


def test_fold_teachers_share_one_space_when_they_started_from_one_seed(folds, tmp_path):
    teachers, sources = _fold_teachers(folds)
    assert CrossFittedTeacher(teachers, sources).seeds == [0, 1]
    assert CrossFittedTeacher(teachers, sources).shares_one_space is False
    same = [load_detector(_reseeded(c, tmp_path / f"s{k}.ckpt", 7)) for k, c in enumerate(folds["ckpts"])]
    assert CrossFittedTeacher(same, sources).shares_one_space is True
    same[1].seed = None
    assert CrossFittedTeacher(same, sources).shares_one_space is None


SPACE = {"fit": {"class_path": "kd_detect.distill.FitNets", "init_args": {"weight": 1.0}},
         "g": {"class_path": "kd_detect.distill.GlobalContextualRelation", "init_args": {"weight": 1.0}}}


def test_a_plugin_that_needs_one_basis_is_refused_on_fold_teachers_of_different_seeds(folds, tmp_path):
    dm = FeatureDataModule(str(folds["data"]), batch_size=4, val_subset="testing")
    with pytest.raises(TeacherCompatibilityError, match=r"fit \(FitNets\).*teacher 't' is cross-fitted.*"
                                                        r"different seeds \(\[0, 1\]\)"):
        _student(folds, dm, distill=SPACE)
    # the same plugin at weight 0 is not computed; one seed is accepted; unknown seeds warn
    _student(folds, dm, distill={**SPACE, "fit": {**SPACE["fit"], "init_args": {"weight": 0.0}}})
    one = [_reseeded(c, tmp_path / f"one{k}.ckpt", 3) for k, c in enumerate(folds["ckpts"])]
    assert "fit" in _student(folds, dm, teachers={"t": one}, distill=SPACE).distill["t"]
    unknown = [_reseeded(c, tmp_path / f"unk{k}.ckpt", None) for k, c in enumerate(folds["ckpts"])]
    with pytest.warns(UserWarning, match="fit \\(FitNets\\).*seeds were not recorded"):
        _student(folds, dm, teachers={"t": unknown}, distill=SPACE)


def test_the_cache_keeps_the_fold_seeds_and_the_student_reads_them(folds, tmp_path):
    cache = tmp_path / "cache.h5"
    assert cache_teacher(["--ckpt", *map(str, folds["ckpts"]), "--data", str(folds["data"]), "--out", str(cache)]) == 0
    assert TeacherCache(cache).fold_seeds == [0, 1]
    assert TeacherCache(cache).shares_one_space is False
    dm = FeatureDataModule(str(folds["data"]), batch_size=4, val_subset="testing")
    with pytest.raises(TeacherCompatibilityError, match="different seeds"):
        _student(folds, dm, teacher_caches={"t": str(cache)}, distill=SPACE)
    single = tmp_path / "single.h5"
    assert cache_teacher(["--ckpt", str(folds["full"]), "--data", str(folds["data"]), "--out", str(single)]) == 0
    assert TeacherCache(single).fold_seeds is None and TeacherCache(single).shares_one_space is True
