"""Mixup across a training batch's videos (kd_detect.data.batch.mix_videos, a detector's
``mixup: α``): the mixing by hand and its properties. That a student's teacher reads the
same mixed videos as the student is checked with the time stretch, in test_time_stretch.py."""

from __future__ import annotations

import pytest
import torch

from kd_detect.data.batch import LABELS, MASK, META, mix_videos
from kd_detect.models.inputs import Standardize
from kd_detect.modules import DetectorModule, instantiate
from tests.helpers import TINY_HEAD


def _batch(B=3, T=4, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[min(2, B - 1), 2:] = False  # a shorter video
    m = mask[:, None, :].float()
    labels = torch.zeros(B, C, T)
    for b in range(B):
        labels[b, b % C] = 1.0  # video b is class b: the mixed labels show the weights
    return {"rgb": torch.randn(B, 2, T, generator=g) * m, "flow": torch.randn(B, 1, T, generator=g) * m,
            LABELS: labels * m, MASK: mask, META: {"video_id": [f"v{b}" for b in range(B)]}}


def test_mixing_by_hand():
    batch = _batch()
    lam, perm = torch.tensor([0.3, 0.8, 0.5]), torch.tensor([1, 2, 0])
    out = mix_videos(batch, 0.4, lam=lam, perm=perm)
    w = [0.7, 0.8, 0.5]  # max(λ, 1 − λ)
    for key in ("rgb", "flow", LABELS):
        for b in range(3):
            j = int(perm[b])
            for t in range(4):
                both = bool(batch[MASK][b, t] and batch[MASK][j, t])
                want = w[b] * batch[key][b, :, t] + (1 - w[b]) * batch[key][j, :, t] if both else batch[key][b, :, t]
                torch.testing.assert_close(out[key][b, :, t], want)
    # video 1 mixed with the short video 2: its steps 2, 3 stay its own
    torch.testing.assert_close(out["rgb"][1, :, 2:], batch["rgb"][1, :, 2:])
    assert out[MASK] is batch[MASK] and out[META] is batch[META]
    assert all(torch.equal(batch[k], _batch()[k]) for k in ("rgb", "flow", LABELS))  # the input is not changed


def test_drawn_mixing_keeps_each_video_mostly_itself_and_labels_convex():
    torch.manual_seed(0)
    batch = _batch(B=6, T=5, C=6)
    out = mix_videos(batch, 1.0)
    valid = batch[MASK]
    own = out[LABELS][torch.arange(6), torch.arange(6)]  # (B, T): the weight of each video's own class
    assert bool((own[valid] >= 0.5).all()) and bool((own[valid] < 1.0).any())
    torch.testing.assert_close(out[LABELS].sum(1)[valid], torch.ones(int(valid.sum())))
    assert bool((out["rgb"][~valid[:, None, :].expand_as(out["rgb"])] == 0).all())  # padding stays 0


@pytest.mark.parametrize("alpha, B", [(0.0, 3), (0.4, 1)])
def test_no_mixing_without_alpha_or_partner(alpha, B):
    batch = _batch(B=B)
    out = mix_videos(batch, alpha)
    assert all(out[k] is batch[k] for k in batch)


def test_mixing_commutes_with_standardisation():
    batch = _batch()
    std = Standardize(2)
    std.set_statistics(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5]))
    lam, perm = torch.tensor([0.1, 0.65, 0.4]), torch.tensor([2, 0, 1])
    a = std(mix_videos(batch, 1.0, lam=lam, perm=perm)["rgb"], batch[MASK])
    b = mix_videos({**batch, "rgb": std(batch["rgb"], batch[MASK])}, 1.0, lam=lam, perm=perm)["rgb"]
    torch.testing.assert_close(a, b)


def _detector(cls=DetectorModule, **kw):
    return instantiate(cls, head=TINY_HEAD, modalities=kw.pop("modalities", ["rgb"]), num_classes=3,
                       classes=["a", "b", "c"], modality_dims={"rgb": 2, "flow": 1}, **kw)


def test_a_detector_trains_on_mixed_videos_and_evaluates_on_the_real_ones(monkeypatch):
    model = _detector(mixup=0.4)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda batch: seen.append(batch) or forward(batch))
    monkeypatch.setattr(model, "log", lambda *a, **k: None)
    torch.manual_seed(0)
    batch = _batch()
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    assert not torch.equal(seen[-1]["rgb"], batch["rgb"])  # trained on mixed inputs ...
    assert bool(((seen[-1][LABELS] > 0) & (seen[-1][LABELS] < 1)).any())  # ... with mixed labels
    model._eval_step(batch, "val")
    assert seen[-1]["rgb"] is batch["rgb"]  # validation reads the videos as they are
    with pytest.raises(ValueError, match="mixup .* must be >= 0"):
        _detector(mixup=-0.1)
