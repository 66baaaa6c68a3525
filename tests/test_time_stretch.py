"""Temporal scale augmentation (kd_detect.data.batch.stretch_videos, a detector's
``time_stretch: s``): the resampling by hand, its properties, and that a student's teacher
reads the same resampled (or mixed) videos as the student."""

from __future__ import annotations

import math

import pytest
import torch

from kd_detect.data.batch import LABELLED, LABELS, MASK, META, mix_videos, stretch_videos
from kd_detect.models.inputs import Standardize
from kd_detect.modules import DetectorModule, StudentModule, TeacherCompatibilityError, TeacherModule, instantiate
from tests.helpers import TINY_HEAD


def _batch(lengths=(6, 4), T=6, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    m = mask[:, None, :].float()
    labels = (torch.rand(B, C, T, generator=g) > 0.5).float()
    return {"rgb": torch.randn(B, 2, T, generator=g) * m, "flow": torch.randn(B, 1, T, generator=g) * m,
            LABELS: labels * m, MASK: mask, META: {"video_id": [f"v{b}" for b in range(B)]}}


def _by_hand(x, length, new):
    """Linear interpolation of ``x (D, ≥length)`` at ``u_j = j (length − 1) / (new − 1)``
    and the nearest step of each ``u_j``, written out one step at a time."""
    values, nearest = [], []
    for j in range(new):
        u = j * (length - 1) / (new - 1) if new > 1 else 0.0
        i = min(int(math.floor(u)), max(length - 2, 0))
        f = u - i
        values.append(x[:, i] * (1 - f) + (x[:, i + 1] * f if f > 0 else 0.0))
        nearest.append(min(int(torch.tensor(u).round()), length - 1))
    return torch.stack(values, 1), nearest


@pytest.mark.parametrize("rates", [(0.5, 2.0), (1.3, 0.8), (1.0, 1.0), (6.0, 0.25)])
def test_resampling_by_hand(rates):
    batch = _batch()
    out = stretch_videos(batch, 8.0, rates=torch.tensor(rates))
    new_lengths = [max(1, round(n / r)) for n, r in zip((6, 4), rates)]
    assert out[MASK].shape == (2, max(new_lengths))
    for b, (length, new) in enumerate(zip((6, 4), new_lengths)):
        assert out[MASK][b].tolist() == [True] * new + [False] * (max(new_lengths) - new)
        for key in ("rgb", "flow"):
            want, nearest = _by_hand(batch[key][b], length, new)
            torch.testing.assert_close(out[key][b, :, :new], want)
            assert bool((out[key][b, :, new:] == 0).all())  # padding is 0
        torch.testing.assert_close(out[LABELS][b, :, :new], batch[LABELS][b][:, nearest])
        assert bool((out[LABELS][b, :, new:] == 0).all())
    assert out[META] is batch[META]
    assert all(torch.equal(batch[k], _batch()[k]) for k in ("rgb", "flow", LABELS, MASK))  # the input is not changed


def test_rate_one_is_the_identity_and_the_ends_stay_in_place():
    batch = _batch()
    same = stretch_videos(batch, 2.0, rates=torch.ones(2))
    for key in ("rgb", "flow", LABELS, MASK):
        torch.testing.assert_close(same[key], batch[key])
    slow = stretch_videos(batch, 4.0, rates=torch.tensor([0.3, 0.3]))
    for b, length in enumerate((6, 4)):
        new = int(slow[MASK][b].sum())
        torch.testing.assert_close(slow["rgb"][b, :, 0], batch["rgb"][b, :, 0])
        torch.testing.assert_close(slow["rgb"][b, :, new - 1], batch["rgb"][b, :, length - 1])


def test_a_linear_ramp_stays_linear_and_labels_keep_their_share():
    """A feature that is a linear function of time is resampled exactly (interpolation is
    exact on lines), and an action keeps its share of the video within a step."""
    T = 40
    ramp = torch.arange(T, dtype=torch.float32)
    labels = torch.zeros(1, 1, T)
    labels[0, 0, 10:30] = 1  # half the video
    batch = {"rgb": (3 * ramp - 1).reshape(1, 1, T), LABELS: labels, MASK: torch.ones(1, T, dtype=torch.bool)}
    for rate in (0.5, 0.8, 1.25, 1.6):
        out = stretch_videos(batch, 2.0, rates=torch.tensor([rate]))
        new = round(T / rate)
        u = torch.arange(new, dtype=torch.float32) * (T - 1) / (new - 1)
        torch.testing.assert_close(out["rgb"][0, 0], 3 * u - 1)
        share = float(out[LABELS][0, 0].sum()) / new
        assert abs(share - 0.5) <= 1.0 / new + 1e-6


def test_drawn_rates_lie_in_the_range_and_are_spread_both_ways():
    torch.manual_seed(0)
    batch = _batch(lengths=(60,) * 200, T=60)
    s = 1.5
    new = stretch_videos(batch, s)[MASK].sum(1).float()
    rates = 60 / new
    assert bool((rates >= 1 / s - 0.02).all()) and bool((rates <= s + 0.02).all())
    assert float((rates > 1.1).float().mean()) > 0.2 and float((rates < 1 / 1.1).float().mean()) > 0.2
    assert abs(float(rates.log().mean())) < 0.05  # log-uniform: as much slower as faster


def test_off_gives_the_batch_back_and_empty_rows_stay_empty():
    batch = _batch()
    out = stretch_videos(batch, 1.0)
    assert all(out[k] is batch[k] for k in batch)
    empty = _batch(lengths=(5, 0), T=5)
    out = stretch_videos(empty, 2.0, rates=torch.tensor([0.5, 0.5]))
    assert out[MASK][1].sum() == 0 and bool((out["rgb"][1] == 0).all())
    single = _batch(lengths=(1,), T=3)
    out = stretch_videos(single, 4.0, rates=torch.tensor([0.25]))
    assert int(out[MASK].sum()) == 4
    torch.testing.assert_close(out["rgb"][0], single["rgb"][0, :, :1].expand(-1, 4))  # a one-step video repeated


def test_unlabelled_flags_and_zero_labels_survive():
    batch = _batch()
    batch[META] = {**batch[META], LABELLED: torch.tensor([True, False])}
    batch[LABELS][1] = 0
    out = stretch_videos(batch, 2.0, rates=torch.tensor([0.7, 1.4]))
    assert out[META][LABELLED].tolist() == [True, False] and bool((out[LABELS][1] == 0).all())


def test_resampling_commutes_with_standardisation():
    batch = _batch()
    std = Standardize(2)
    std.set_statistics(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5]))
    rates = torch.tensor([0.7, 1.6])
    a = std(stretch_videos(batch, 2.0, rates=rates)["rgb"], stretch_videos(batch, 2.0, rates=rates)[MASK])
    b = stretch_videos({**batch, "rgb": std(batch["rgb"], batch[MASK])}, 2.0, rates=rates)["rgb"]
    torch.testing.assert_close(a, b)


def _detector(cls=DetectorModule, **kw):
    return instantiate(cls, head=TINY_HEAD, modalities=kw.pop("modalities", ["rgb"]), num_classes=3,
                       classes=["a", "b", "c"], modality_dims={"rgb": 2, "flow": 1}, **kw)


def test_a_detector_trains_on_resampled_videos_and_evaluates_on_the_real_ones(monkeypatch):
    model = _detector(time_stretch=1.5, mixup=0.4)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda batch: seen.append(batch) or forward(batch))
    monkeypatch.setattr(model, "log", lambda *a, **k: None)
    torch.manual_seed(3)
    batch = _batch(lengths=(6, 6, 4))
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    torch.manual_seed(3)  # the same draws: resampled first, then mixed
    rates = torch.empty(3).uniform_(-math.log(1.5), math.log(1.5)).exp()
    want = mix_videos(stretch_videos(batch, 1.5, rates=rates), 0.4)
    torch.testing.assert_close(seen[-1]["rgb"], want["rgb"])
    assert seen[-1][MASK].shape != batch[MASK].shape or not torch.equal(seen[-1][MASK], batch[MASK])
    model._eval_step(batch, "val")
    assert seen[-1]["rgb"] is batch["rgb"]  # validation reads the videos as they are
    with pytest.raises(ValueError, match="time_stretch .* must be >= 1"):
        _detector(time_stretch=0.8)


@pytest.mark.parametrize("option, value", [("time_stretch", 2.0), ("mixup", 0.4)])
def test_the_teacher_reads_the_augmented_videos_the_student_reads(monkeypatch, option, value):
    """Either augmentation (and so both, applied in one place: ``DetectorModule.augment``)
    reaches the live teacher as the student sees it, and a cache, which holds the teacher's
    outputs on the stored videos, is refused with it."""
    teacher = _detector(TeacherModule, modalities=["rgb", "flow"]).eval()
    student = _detector(StudentModule, **{option: value}, teacher_dims={"t": teacher.feature_dim},
                        distill={"g": {"class_path": "kd_detect.distill.GlobalContextualRelation"}})
    student._teachers["t"] = teacher  # a loaded teacher, without a checkpoint file
    seen = {}
    forward, teacher_outputs = student.forward, student.teacher_outputs
    monkeypatch.setattr(student, "forward", lambda batch: seen.setdefault("student", batch) and forward(batch))
    monkeypatch.setattr(student, "teacher_outputs",
                        lambda name, batch: seen.setdefault("teacher", batch) and teacher_outputs(name, batch))
    monkeypatch.setattr(student, "log", lambda *a, **k: None)
    torch.manual_seed(1)
    batch = _batch()
    assert torch.isfinite(student.training_step(batch, 0))
    flow = seen["student"]["flow"]
    assert seen["teacher"] is seen["student"] and (flow.shape != batch["flow"].shape or not torch.equal(flow, batch["flow"]))
    with pytest.raises(TeacherCompatibilityError, match=f"{option}={value} with teacher_caches"):
        _detector(StudentModule, **{option: value}, teacher_caches={"t": "cache.h5"})
