"""StudentModule: frozen teachers, checkpoint hygiene, teacher cache, schedules, errors."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from kd_detect.apps.cache_teacher import main as cache_teacher
from kd_detect.callbacks import DistillationDecay, DistillationWarmup, StopDistillation
from kd_detect.data.batch import to_model_layout
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.data.format import FeatureFile, FeatureFileError, VideoRecord, write_feature_file
from kd_detect.distill.base import DistillationLoss
from kd_detect.errors import UsageError
from kd_detect.models.heads.base import HeadOutput
from kd_detect.modules import StudentModule, TeacherCompatibilityError, TeacherModule, instantiate
from tests.helpers import TINY_HEAD


class ProjectedMSE(DistillationLoss):
    """A minimal plugin (the README's 'add a distillation loss' pattern): a learnable
    projection of the student features regressed onto the teacher's, masked."""

    def build(self, student_dim: int, teacher_dim: int, num_classes: int) -> None:
        self.proj = nn.Conv1d(student_dim, teacher_dim, 1)

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(1).float()
        diff = (self.proj(student.features) - teacher.features) ** 2 * m
        return diff.sum() / (m.sum() * teacher.features.shape[1])


def _write(path, classes=("a", "b", "c"), n=8, seed=0, dims=(("rgb", 6), ("flow", 4))):
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n):
        T = int(rng.integers(10, 24))
        feats = {m: rng.standard_normal((T, d)).astype(np.float32) for m, d in dims}
        segs = np.array([[i % len(classes), 1.0, T / 2.0]])
        videos.append(VideoRecord(f"v{i:02d}", "training" if i < n - 3 else "testing", float(T), feats, segs))
    return write_feature_file(path, list(classes), [m for m, _ in dims], videos, dtype="float32")


def _trainer(**kw) -> pl.Trainer:
    kw.setdefault("max_epochs", 1)
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    data = _write(root / "d.h5")
    dm = FeatureDataModule(str(data), batch_size=4)
    pl.seed_everything(0)
    teacher = instantiate(
        TeacherModule, head=TINY_HEAD, modalities=["rgb", "flow"], num_classes=dm.num_classes,
        classes=dm.classes, modality_dims=dm.modality_dims, lr=1e-2,
    )
    trainer = _trainer(max_epochs=2)
    trainer.fit(teacher, datamodule=dm)
    ckpt = root / "teacher.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"root": root, "data": data, "ckpt": ckpt}


def _student(files, dm, **kw) -> StudentModule:
    kw.setdefault("teachers", {"t": str(files["ckpt"])})
    kw.setdefault("distill", {"mse": {"class_path": f"{__name__}.ProjectedMSE", "init_args": {"weight": 1.0}}})
    return instantiate(
        StudentModule, head=TINY_HEAD, modalities=["rgb"], num_classes=dm.num_classes, classes=dm.classes,
        modality_dims=dm.modality_dims, lr=1e-2, **kw,
    )


class TeacherWatch(pl.Callback):
    """Asserts, at every training step, that the teacher is frozen and in eval mode."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for teacher in pl_module.teachers.values():
            assert not teacher.training and all(not m.training for m in teacher.modules())
            assert all(not p.requires_grad for p in teacher.parameters())
        self.checked += 1

    def on_after_backward(self, trainer, pl_module):
        for teacher in pl_module.teachers.values():
            assert all(p.grad is None for p in teacher.parameters())
        assert pl_module.distill["t"]["mse"].proj.weight.grad is not None  # the plugin's head learns


def test_teacher_frozen_byte_identical_and_not_in_student_checkpoint(files, tmp_path):
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _student(files, dm)
    teacher = student.teachers["t"]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    watch = TeacherWatch()
    trainer = _trainer(max_epochs=2, callbacks=[watch])
    trainer.fit(student, datamodule=dm)
    assert watch.checked >= 2
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed"
    path = tmp_path / "s.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("distill.t.mse.proj") for k in state)
    n_student = sum(v.numel() for k, v in state.items())
    assert n_student == sum(p.numel() for p in student.parameters()) + sum(
        b.numel() for b in student.buffers()
    )
    assert not any("teacher" in k for k in state)
    # the teacher has an rgb+flow input conv the rgb-only student lacks: its shape is absent
    t_in = teacher.state_dict()["head.input_conv.weight"]
    assert state["head.input_conv.weight"].shape != t_in.shape
    # the student rebuilds from its checkpoint without its teachers (export/inference)
    from kd_detect.modules import load_detector

    bare = load_detector(path, expect=StudentModule, teachers={})
    assert bare.teacher_dims == {"t": teacher.feature_dim} and not bare.teachers


def test_zero_weight_plugins_skip_the_teacher(files, monkeypatch):
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _student(files, dm, distill={"mse": {"class_path": f"{__name__}.ProjectedMSE", "init_args": {"weight": 0.0}}})
    calls = []
    teacher = student.teachers["t"]
    monkeypatch.setattr(teacher, "forward", lambda batch: calls.append(1))
    dm.setup("fit")
    batch = to_model_layout(next(iter(dm.train_dataloader())))
    loss = student.training_step(batch, 0)
    assert torch.isfinite(loss) and calls == []


def test_cache_and_live_teacher_give_identical_losses(files, tmp_path):
    cache = tmp_path / "cache.h5"
    assert cache_teacher(["--ckpt", str(files["ckpt"]), "--data", str(files["data"]), "--out", str(cache)]) == 0
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    torch.manual_seed(0)
    live = _student(files, dm).eval()
    cached = _student(files, dm, teacher_caches={"t": str(cache)})
    cached.load_state_dict(live.state_dict())
    cached.eval()
    assert not cached.teachers  # the cache replaced the live teacher
    dm.setup("test")
    for batch in map(to_model_layout, dm.test_dataloader()):
        out = live(batch)
        a = live.distillation_losses(out, batch)
        b = cached.distillation_losses(out, batch)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_cache_of_cropped_window_matches_full_video_slice(files, tmp_path):
    from kd_detect.data.teacher_cache import TeacherCache

    cache = tmp_path / "cache.h5"
    cache_teacher(["--ckpt", str(files["ckpt"]), "--data", str(files["data"]), "--out", str(cache)])
    dm = FeatureDataModule(str(files["data"]), batch_size=4, max_steps=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = TeacherCache(cache).batch(batch["meta"], batch["mask"])
    import h5py

    with h5py.File(cache) as h5:
        for i, vid in enumerate(batch["meta"]["video_id"]):
            off, n = int(batch["meta"]["offset"][i]), int(batch["mask"][i].sum())
            full = torch.from_numpy(h5["videos"][vid]["features"][()]).T
            torch.testing.assert_close(out.features[i, :, :n], full[:, off : off + n])
            assert torch.all(out.features[i, :, n:] == 0)


def test_stale_cache_refused(files, tmp_path):
    cache = tmp_path / "cache.h5"
    cache_teacher(["--ckpt", str(files["ckpt"]), "--data", str(files["data"]), "--out", str(cache)])
    changed = tmp_path / "teacher2.ckpt"
    ckpt = torch.load(files["ckpt"], map_location="cpu", weights_only=False)
    key = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1
    torch.save(ckpt, changed)
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    with pytest.raises(FeatureFileError, match="stale teacher cache"):
        _student(files, dm, teachers={"t": str(changed)}, teacher_caches={"t": str(cache)})


def test_incompatible_teachers_are_refused_clearly(files, tmp_path):
    other = _write(tmp_path / "other.h5", classes=("x", "y", "z"))
    dm = FeatureDataModule(str(other), batch_size=4)
    with pytest.raises(TeacherCompatibilityError, match="trained on 3 classes"):
        _student(files, dm)
    rgb_only = FeatureDataModule(str(files["data"]), modalities=["rgb"], batch_size=4)
    student = _student(files, rgb_only)
    with pytest.raises(TeacherCompatibilityError, match="needs modality 'flow'"):
        _trainer(max_steps=1).fit(student, datamodule=rgb_only)


def test_schedules_compose(files):
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _student(files, dm)

    class T:  # the two attributes the schedules read
        global_step = 0
        current_epoch = 0
        max_epochs = 50

    warm, stop = DistillationWarmup(warmup_steps=4), StopDistillation(epoch=2)
    t = T()
    stop.on_train_epoch_start(t, student)
    warm.on_train_batch_start(t, student, None, 0)
    assert student.distill_scale == pytest.approx(0.25)
    t.global_step = 10
    warm.on_train_batch_start(t, student, None, 0)
    assert student.distill_scale == 1.0
    t.current_epoch = 2
    stop.on_train_epoch_start(t, student)
    warm.on_train_batch_start(t, student, None, 0)
    assert student.distill_scale == 0.0 and student.active_plugins() == {}
    with pytest.raises(ValueError, match="exactly one"):
        DistillationWarmup()


def test_stop_distillation_at_a_fraction_of_the_run(files):
    """``fraction`` stops at round(fraction · max_epochs): the same YAML stops halfway through
    a 50-epoch and a 100-epoch run; the epoch before still distils."""
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _student(files, dm)

    class T:
        current_epoch, max_epochs = 0, 50

    stop, t = StopDistillation(fraction=0.5), T()
    for max_epochs, last_distilled in ((50, 24), (100, 49), (7, 3)):  # 3.5 rounds to 4 (half to even)
        t.max_epochs = max_epochs
        t.current_epoch = last_distilled
        stop.on_train_epoch_start(t, student)
        assert student.distill_scale == 1.0 and student.active_plugins() != {}
        t.current_epoch = last_distilled + 1
        stop.on_train_epoch_start(t, student)
        assert student.distill_scale == 0.0 and student.active_plugins() == {}
    assert StopDistillation(epoch=3).stop_epoch(100) == 3
    for bad in ({}, {"epoch": 2, "fraction": 0.5}, {"epoch": -1}, {"fraction": 0.0}, {"fraction": 1.5}):
        with pytest.raises(ValueError, match="StopDistillation"):
            StopDistillation(**bad)


def test_distillation_decay_is_linear_to_zero_and_composes(files):
    """``DistillationDecay``: factor 1 − e / round(fraction · max_epochs), 0 from there on;
    it multiplies with the other schedules' factors."""
    decay = DistillationDecay()
    assert [decay.factor(e, 50) for e in (0, 10, 25, 49)] == pytest.approx([1.0, 0.8, 0.5, 0.02])
    half = DistillationDecay(fraction=0.5)
    assert [half.factor(e, 50) for e in (0, 5, 24, 25, 40)] == pytest.approx([1.0, 0.8, 0.04, 0.0, 0.0])
    assert [half.factor(e, 7) for e in (0, 1, 3, 6)] == pytest.approx([1.0, 0.75, 0.25, 0.0])  # 3.5 → 4
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="DistillationDecay"):
            DistillationDecay(bad)

    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _student(files, dm)

    class T:
        global_step, current_epoch, max_epochs = 0, 10, 50

    warm = DistillationWarmup(warmup_steps=4)
    decay.on_train_epoch_start(T(), student)
    warm.on_train_batch_start(T(), student, None, 0)
    assert student.distill_scale == pytest.approx(0.8 * 0.25)


class ScaleWatch(pl.Callback):
    """Records, at the first step of each epoch, the distillation scale and whether any plugin runs."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append((pl_module.distill_scale, bool(pl_module.active_plugins())))


def test_distillation_decay_in_a_real_fit(files):
    """Through Lightning's hooks: the factor is set before the epoch's first step, and the
    plugins (and the teacher) stop once it reaches 0."""
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student, watch = _student(files, dm), ScaleWatch()
    _trainer(max_epochs=4, callbacks=[DistillationDecay(fraction=0.5), watch]).fit(student, datamodule=dm)
    assert watch.seen == [(1.0, True), (0.5, True), (0.0, False), (0.0, False)]


# ------------------------------------------------------------ distill_from & weight: auto
class Recording(ProjectedMSE):
    """ProjectedMSE that keeps the student features it was given."""

    def loss(self, student: HeadOutput, teacher: HeadOutput, mask: Tensor) -> Tensor:
        self.seen = student.features.detach().clone()
        return super().loss(student, teacher, mask)


def _first_batch(dm, stage="fit"):
    dm.setup(stage)
    return to_model_layout(next(iter(dm.train_dataloader())))


def test_clean_mode_plugins_see_the_eval_features_with_gradients(files):
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    rec = {"mse": {"class_path": f"{__name__}.Recording", "init_args": {"weight": 1.0}}}
    batch = _first_batch(dm)
    seen = {}
    for mode in ("dropout", "clean"):
        torch.manual_seed(0)
        student = _student(files, dm, distill=rec, distill_from=mode).train()
        loss = student.training_step(batch, 0)
        loss.backward()
        seen[mode] = student.distill["t"]["mse"].seen
        assert student.head.input_conv.weight.grad is not None
        assert all(m.training for m in student.modules())  # dropout switched back on
        with torch.no_grad():
            student.eval()
            clean = student(batch).features
    torch.testing.assert_close(seen["clean"], clean)  # same weights: both students start from seed 0
    assert not torch.allclose(seen["dropout"], clean, atol=1e-3)
    with pytest.raises((ValueError, argparse.ArgumentError), match="distill_from"):
        _student(files, dm, distill_from="noisy")


def test_fixed_weight_total_is_bce_plus_weighted_term(files):
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _student(files, dm).train()
    batch = _first_batch(dm)
    torch.manual_seed(3)
    total = student.training_step(batch, 0)
    torch.manual_seed(3)
    out = student(batch)
    want = student.detection_loss(out, batch) + student.distill["t"]["mse"](out, student.teacher_outputs("t", batch), batch["mask"])
    torch.testing.assert_close(total, want)
    assert not student.distill["t"]["mse"].auto


def _auto_student(files, dm, **kw):
    auto = {"mse": {"class_path": f"{__name__}.ProjectedMSE", "init_args": {"weight": "auto"}}}
    return _student(files, dm, distill=auto, **kw)


def test_auto_weight_is_the_hand_computed_gradient_ratio(files):
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _auto_student(files, dm, auto_share=0.5, auto_warmup=2)
    plugin = student.distill["t"]["mse"]
    ratios = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        S = torch.randn(2, 16, 5, generator=g, requires_grad=True)
        v = torch.randn(2, 16, 5, generator=g)
        out = HeadOutput(S, S[:, :3])
        bce = 1.5 * (S**2).sum()  # ∂/∂S = 3 S
        term = (S * v).sum()  # ∂/∂S = v
        student.observe_auto_weights(bce, out, out, {("t", "mse"): term})
        ratios.append((3 * S.detach().norm().item(), v.norm().item()))
    want = 0.5 * (ratios[0][0] + ratios[1][0]) / (ratios[0][1] + ratios[1][1])  # ρ · mean‖∇BCE‖ / mean‖∇L‖
    assert plugin.auto_resolved and plugin.weight == pytest.approx(want, rel=1e-6)


def test_auto_share_is_split_among_the_teachers(files):
    """With two teachers each teacher's copy of a ``weight: auto`` loss gets ρ/2, so its
    resolved weight is half the one-teacher weight for the same gradient norms."""
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    one = _auto_student(files, dm, auto_share=0.5, auto_warmup=1)
    two = _auto_student(files, dm, auto_share=0.5, auto_warmup=1,
                        teachers={"a": str(files["ckpt"]), "b": str(files["ckpt"])})
    assert one.distill["t"]["mse"].auto_share == 0.5
    assert two.distill["a"]["mse"].auto_share == two.distill["b"]["mse"].auto_share == 0.25
    g = torch.Generator().manual_seed(0)
    S = torch.randn(2, 16, 5, generator=g, requires_grad=True)
    v = torch.randn(2, 16, 5, generator=g)
    out = HeadOutput(S, S[:, :3])
    one.observe_auto_weights(1.5 * (S**2).sum(), out, out, {("t", "mse"): (S * v).sum()})
    two.observe_auto_weights(1.5 * (S**2).sum(), out, out, {("a", "mse"): (S * v).sum(), ("b", "mse"): (S * v).sum()})
    want = 0.5 * 3 * S.detach().norm().item() / v.norm().item()
    assert one.distill["t"]["mse"].weight == pytest.approx(want, rel=1e-6)
    assert two.distill["a"]["mse"].weight == two.distill["b"]["mse"].weight == pytest.approx(want / 2, rel=1e-6)


def test_auto_weight_is_refused_where_the_detection_loss_does_not_reach_the_features(files):
    """A head whose distilled features the detection loss does not train (Decomposed with
    ``detach_motion``) leaves ``weight: auto`` nothing to scale to: one line saying so, not
    a weight of 0 that would switch the term off in silence."""
    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    student = _auto_student(files, dm, auto_warmup=2)
    S = torch.randn(2, 16, 5, requires_grad=True)
    logits = torch.randn(2, 3, 5, requires_grad=True)  # does not depend on S
    out = HeadOutput(S, logits)
    with pytest.raises(UsageError, match=r"distill t/mse: weight: auto .* does not reach them .* fixed weight"):
        student.observe_auto_weights((logits**2).sum(), out, out, {("t", "mse"): (S**2).sum()})
    assert int(student.distill["t"]["mse"].auto_state[0]) == 0


class WeightWatch(pl.Callback):
    def __init__(self) -> None:
        self.weights: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(pl_module.distill["t"]["mse"].weight)


def test_auto_weight_fixed_after_warmup_and_kept_by_checkpoints(files, tmp_path):
    dm = FeatureDataModule(str(files["data"]), batch_size=2)
    student = _auto_student(files, dm, auto_share=0.3, auto_warmup=2)
    watch = WeightWatch()
    trainer = _trainer(max_epochs=3, max_steps=5, callbacks=[watch])
    trainer.fit(student, datamodule=dm)
    w = watch.weights
    assert len(w) == 5 and all(x > 0 and math.isfinite(x) for x in w)
    assert w[1] == w[2] == w[3] == w[4] and w[0] != w[1]  # running mean over 2 steps, then fixed
    plugin = student.distill["t"]["mse"]
    assert int(plugin.auto_state[0]) == 2 and plugin.auto_resolved
    path = tmp_path / "auto.ckpt"
    trainer.save_checkpoint(path)
    from kd_detect.modules import load_detector

    back = load_detector(path, expect=StudentModule, teachers={"t": str(files["ckpt"])})
    again = back.distill["t"]["mse"]
    assert again.auto and again.auto_resolved and again.weight == pytest.approx(w[-1], rel=1e-12)


def test_reduced_precision_follows_the_trainer():
    from kd_detect.modules.student import reduced_precision

    assert reduced_precision("bf16-mixed") is torch.bfloat16 and reduced_precision("16-mixed") is torch.float16
    assert reduced_precision("32-true") is None and reduced_precision("bf16-true") is None
    assert reduced_precision(None) is None


BF16_LOSS_RTOL = 0.02  # stated tolerance of the distillation losses with a bf16 teacher forward


def test_live_teacher_in_bf16_keeps_losses_within_tolerance(files):
    """Under a bf16-mixed trainer the frozen teacher runs under bf16 autocast and
    inference_mode; its outputs come back as ordinary float32 tensors (usable in the
    plugins' backward) and every distillation loss stays within BF16_LOSS_RTOL of fp32."""
    from types import SimpleNamespace

    dm = FeatureDataModule(str(files["data"]), batch_size=4)
    plugins = {"mse": {"class_path": f"{__name__}.ProjectedMSE", "init_args": {"weight": 1.0}},
               "atomic": {"class_path": "kd_detect.distill.AtomicContrastive", "init_args": {"weight": 1.0}},
               "global": {"class_path": "kd_detect.distill.GlobalContextualRelation", "init_args": {"weight": 1.0}},
               "boundary": {"class_path": "kd_detect.distill.BoundarySaliency", "init_args": {"weight": 1.0}}}
    torch.manual_seed(0)
    student = _student(files, dm, distill=plugins).eval()
    dm.setup("test")
    batch = to_model_layout(next(iter(dm.test_dataloader())))
    out = student(batch)
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        student._trainer = SimpleNamespace(precision=precision)
        try:
            teacher = student.teacher_outputs("t", batch)
            results[precision] = (teacher, student.distillation_losses(out, batch))
        finally:
            student._trainer = None
    (t32, l32), (t16, l16) = results["32-true"], results["bf16-mixed"]
    for t in (t32, t16):
        assert t.features.dtype == torch.float32 and not t.features.is_inference() and not t.logits.is_inference()
    assert not torch.equal(t32.features, t16.features)  # the bf16 path really ran in bf16
    torch.testing.assert_close(t16.features, t32.features, rtol=0.05, atol=0.05)
    assert l32.keys() == l16.keys() and len(l32) == 4
    for key in l32:
        torch.testing.assert_close(l16[key], l32[key], rtol=BF16_LOSS_RTOL, atol=1e-4)
    total = sum(l16.values())
    total.backward()  # the plugins can save the teacher's outputs for backward
    assert student.distill["t"]["mse"].proj.weight.grad is not None


def test_cache_from_another_feature_file_is_refused(files, tmp_path):
    """Issue 16: the cache records its source file's content identity; same ids and T but
    other content is refused with StaleCacheError naming both files, before training."""
    import shutil

    import h5py

    from kd_detect.data.teacher_cache import TeacherCache
    from kd_detect.errors import StaleCacheError

    cache = tmp_path / "cache.h5"
    assert cache_teacher(["--ckpt", str(files["ckpt"]), "--data", str(files["data"]), "--out", str(cache)]) == 0
    TeacherCache(cache).check_source(files["data"])  # its own file
    same = tmp_path / "copy.h5"
    shutil.copyfile(files["data"], same)
    TeacherCache(cache).check_source(same)  # a copy: same content, accepted
    other = tmp_path / "other.h5"
    shutil.copyfile(files["data"], other)
    with h5py.File(other, "a") as h5:  # same ids, same T, one feature value changed
        h5["videos/v00/rgb"][0, 0] += 1.0
    dm = FeatureDataModule(str(other), batch_size=4)
    student = _student(files, dm, teacher_caches={"t": str(cache)})
    with pytest.raises(StaleCacheError) as info:
        _trainer().fit(student, datamodule=dm)
    msg = str(info.value)
    assert "stale teacher cache" in msg and str(cache) in msg and str(other) in msg and str(files["data"]) in msg
    assert "kd-detect cache-teacher" in msg
    # an old cache without the identity: refused with the command that rebuilds it
    with h5py.File(cache, "a") as h5:
        del h5.attrs["source_sha256"]
    with pytest.raises(StaleCacheError, match=r"records no content identity.*rebuild it: `kd-detect cache-teacher"):
        TeacherCache(cache).check_source(files["data"])


def test_a_student_trains_on_unlabelled_videos_from_a_live_or_a_cached_teacher(files, tmp_path):
    """Videos of subset ``unlabelled`` (no labels, no segments) are cached by ``cache-teacher``
    like any other; the student's training batches mix them with the labelled videos, the live
    and the cached teacher give the same losses on them, and a fit records them as trained on."""
    base = FeatureFile(files["data"])
    extra = [VideoRecord(f"u{i}", "unlabelled", float(T), {m: np.random.default_rng(i).standard_normal((T, d)).astype(
        np.float32) for m, d in (("rgb", 6), ("flow", 4))}) for i, T in enumerate((12, 17, 20))]
    path = write_feature_file(tmp_path / "u.h5", base.classes, base.modalities,
                              [base.record(v) for v in base.video_ids] + extra, dtype="float32")
    cache = tmp_path / "cache.h5"
    assert cache_teacher(["--ckpt", str(files["ckpt"]), "--data", str(path), "--out", str(cache)]) == 0
    dm = FeatureDataModule(str(path), batch_size=8, unlabelled_subset="unlabelled")
    torch.manual_seed(0)
    live = _student(files, dm).eval()
    cached = _student(files, dm, teacher_caches={"t": str(cache)})
    cached.load_state_dict(live.state_dict())
    cached.eval()
    batch = to_model_layout(next(iter(dm.train_dataloader())))
    assert sorted(v for v, lab in zip(batch["meta"]["video_id"], batch["meta"]["labelled"]) if not lab) == ["u0", "u1", "u2"]
    out = live(batch)
    a, b = live.distillation_losses(out, batch), cached.distillation_losses(out, batch)
    torch.testing.assert_close(a[("t", "mse")], b[("t", "mse")], rtol=1e-5, atol=1e-6)
    student = _student(files, dm, teacher_caches={"t": str(cache)})
    trainer = _trainer()
    trainer.fit(student, datamodule=dm)
    assert {"u0", "u1", "u2"} <= set(student.training_videos)
