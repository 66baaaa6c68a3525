"""StudentModule(init_from=...): the student's head starts as the teacher's (start_from_teacher)."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from kd_detect.data.batch import MASK, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.data.format import VideoRecord, write_feature_file
from kd_detect.modules import StudentModule, TeacherCompatibilityError, TeacherModule, instantiate
from kd_detect.modules.inference import load_without_teachers
from tests.helpers import TINY_HEAD

DIMS = {"rgb": 6, "flow": 4, "pose": 3}


def _data(path):
    rng = np.random.default_rng(0)
    videos = []
    for i in range(6):
        T = int(rng.integers(10, 20))
        feats = {m: (3.0 + 2.0 * rng.standard_normal((T, d))).astype(np.float32) for m, d in DIMS.items()}
        videos.append(VideoRecord(f"v{i}", "training" if i < 4 else "testing", float(T), feats,
                                  np.array([[i % 2, 1.0, T / 2.0]])))
    return write_feature_file(path, ["a", "b"], list(DIMS), videos, dtype="float32")


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, max_epochs=1, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Teachers trained one epoch on RGB+flow+pose, in two modality orders, standardising."""
    root = tmp_path_factory.mktemp("tinit")
    data = _data(root / "d.h5")
    dm = FeatureDataModule(str(data), batch_size=2, modalities=list(DIMS))
    ckpts = {}
    for order in (("rgb", "flow", "pose"), ("flow", "pose", "rgb")):
        pl.seed_everything(0)
        teacher = instantiate(TeacherModule, head=TINY_HEAD, modalities=list(order), num_classes=2,
                              classes=dm.classes, modality_dims=dm.modality_dims, standardize=True, lr=1e-2)
        trainer = _trainer()
        trainer.fit(teacher, datamodule=dm)
        ckpts[order] = root / f"teacher_{'_'.join(order)}.ckpt"
        trainer.save_checkpoint(ckpts[order])
    return {"root": root, "data": data, "dm": dm, "ckpts": ckpts}


def _student(setup, order=("rgb", "flow", "pose"), modalities=("rgb",), **kw) -> StudentModule:
    kw.setdefault("teachers", {"t": str(setup["ckpts"][order])})
    kw.setdefault("head", TINY_HEAD)
    return instantiate(StudentModule, modalities=list(modalities), num_classes=2, classes=setup["dm"].classes,
                       modality_dims=setup["dm"].modality_dims, standardize=True, lr=1e-2, **kw)


def _batch(setup, teacher, flow_pose_at_mean: bool):
    dm = setup["dm"]
    dm.setup("fit")
    batch = to_model_layout(next(iter(dm.train_dataloader())))
    if flow_pose_at_mean:
        for m in ("flow", "pose"):  # at the training mean: 0 after the teacher's standardisation
            batch[m] = teacher.standardizers[m].mean[None, :, None].expand_as(batch[m]).clone()
    return batch


@pytest.mark.parametrize("order", [("rgb", "flow", "pose"), ("flow", "pose", "rgb")])
def test_student_computes_what_the_teacher_computes_with_the_other_modalities_at_their_mean(setup, order):
    student = _student(setup, order, init_from="t").eval()
    teacher = student.teachers["t"]
    offset = 0 if order[0] == "rgb" else DIMS["flow"] + DIMS["pose"]
    w_t, w_s = teacher.head.input_conv.weight, student.head.input_conv.weight
    assert w_s.shape[1] == DIMS["rgb"] and torch.equal(w_s, w_t[:, offset:offset + DIMS["rgb"]])
    torch.testing.assert_close(student.standardizers["rgb"].mean, teacher.standardizers["rgb"].mean)
    batch = _batch(setup, teacher, flow_pose_at_mean=True)
    with torch.no_grad():
        s, t = student(batch), teacher(batch)
    torch.testing.assert_close(s.logits, t.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.features, t.features, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the teacher does read flow and pose: with their real values it differs
        moved = teacher(_batch(setup, teacher, flow_pose_at_mean=False)).logits
    m = batch[MASK].unsqueeze(1).bool().expand_as(moved)
    assert (moved - t.logits)[m].abs().max() > 1e-3


def test_a_cached_teacher_still_gives_its_weights(setup, tmp_path):
    from kd_detect.apps.cache_teacher import main as cache_teacher

    ckpt = setup["ckpts"][("rgb", "flow", "pose")]
    cache = tmp_path / "cache.h5"
    assert cache_teacher(["--ckpt", str(ckpt), "--data", str(setup["data"]), "--out", str(cache)]) == 0
    live = _student(setup, init_from="t")
    cached = _student(setup, init_from="t", teacher_caches={"t": str(cache)})
    assert cached.teachers == {}  # the outputs come from the cache; the checkpoint gave the weights
    for name, value in live.student_state_dict().items():
        assert torch.equal(value, cached.state_dict()[name]), name
    with pytest.raises(TeacherCompatibilityError, match="not a teacher checkpoint"):
        _student(setup, init_from="t", teachers={}, teacher_caches={"t": str(cache)})


def test_without_init_from_the_student_is_its_own(setup):
    student = _student(setup)
    assert not torch.equal(student.head.classifier.weight, student.teachers["t"].head.classifier.weight)
    assert not student.standardizers["rgb"].is_ready  # measured on the training videos when fit starts


def test_a_fitted_student_reloads_without_its_teacher(setup, tmp_path):
    student = _student(setup, init_from="t")
    trainer = _trainer(limit_train_batches=1, limit_val_batches=1)
    trainer.fit(student, datamodule=setup["dm"])
    trainer.save_checkpoint(tmp_path / "s.ckpt")
    again = load_without_teachers(tmp_path / "s.ckpt")
    assert again.teachers == {}
    for name, value in student.student_state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name  # the checkpoint's weights, not the teacher's


@pytest.mark.parametrize("change, match", [
    ({"init_from": "nobody"}, "'nobody' is not a teacher checkpoint"),
    ({"init_from": "t", "head": {**TINY_HEAD, "init_args": {"hidden": 8, "num_layers": 2}}},
     "head parameter 'input_conv.weight'"),
    ({"init_from": "t", "head": {"class_path": "kd_detect.models.heads.TCN", "init_args": {"hidden": 16}}},
     "its head is a PDAN, the student's a TCN"),
])
def test_init_from_refusals_name_what_differs(setup, change, match):
    with pytest.raises(TeacherCompatibilityError, match=match) as err:
        _student(setup, **change)
    if change["init_from"] == "t":  # the checkpoint is named
        assert str(setup["ckpts"][("rgb", "flow", "pose")]) in str(err.value)


def test_a_late_fusion_teacher_gives_the_head_of_the_students_stream(setup):
    from kd_detect.modules.student import start_from_teacher

    dm = setup["dm"]
    pl.seed_everything(1)
    late = instantiate(TeacherModule, head=TINY_HEAD, modalities=["flow", "rgb"], num_classes=2, classes=dm.classes,
                       modality_dims=dm.modality_dims, fusion="late", standardize=True)
    for m, (mean, std) in dm.feature_statistics(["flow", "rgb"]).items():
        late.standardizers[m].set_statistics(mean + 0.5, 2.0 * std)  # not what the student would measure
    student = _student(setup).eval()
    assert start_from_teacher(student, late) == []  # one stream, one modality: nothing to slice
    late.eval()
    batch = _batch(setup, late, flow_pose_at_mean=False)
    with torch.no_grad():
        rgb_stream = late.heads["rgb"](late.standardizers["rgb"](batch["rgb"], batch[MASK]), batch[MASK])
        s = student(batch)
    torch.testing.assert_close(s.logits, rgb_stream.logits)
    torch.testing.assert_close(s.features, rgb_stream.features)
    two = _student(setup, modalities=("rgb", "flow"))
    with pytest.raises(TeacherCompatibilityError, match=r"the student must read one of its modalities, it reads \['rgb', 'flow'\]"):
        start_from_teacher(two, late)


def test_init_from_refuses_mid_fusion_a_standardisation_mismatch_and_a_missing_modality(setup):
    from kd_detect.modules.student import start_from_teacher

    dm = setup["dm"]
    mid = instantiate(TeacherModule, head=TINY_HEAD, modalities=["rgb", "flow"], num_classes=2, classes=dm.classes,
                      modality_dims=dm.modality_dims, fusion="mid", embed_dim=16, standardize=True)
    student = _student(setup)
    with pytest.raises(TeacherCompatibilityError, match="needs an early- or late-fusion teacher, this one is 'mid'"):
        start_from_teacher(student, mid)
    raw = instantiate(TeacherModule, head=TINY_HEAD, modalities=["rgb", "flow"], num_classes=2, classes=dm.classes,
                      modality_dims=dm.modality_dims)
    with pytest.raises(TeacherCompatibilityError, match="standardize is False in the teacher and True"):
        start_from_teacher(student, raw)
    flow_only = instantiate(TeacherModule, head=TINY_HEAD, modalities=["flow", "pose"], num_classes=2,
                            classes=dm.classes, modality_dims=dm.modality_dims, standardize=True)
    with pytest.raises(TeacherCompatibilityError, match="the student reads 'rgb' of dim 6, the teacher does not"):
        start_from_teacher(student, flow_only)
