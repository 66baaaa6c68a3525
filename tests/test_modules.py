"""DetectorModule / TeacherModule behaviour: loss, fusion, subclassing, checkpoint reload."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from kd_detect.modules import CheckpointError, DetectorModule, TeacherModule, instantiate, load_detector, masked_bce
from tests.helpers import TINY_HEAD

DIMS = {"rgb": 12, "flow": 6, "pose": 5}


def _batch(B: int = 3, T: int = 20, C: int = 4, lengths=(20, 13, 7), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    batch = {m: torch.randn(B, d, T, generator=g) * mask.unsqueeze(1) for m, d in DIMS.items()}
    batch["labels"] = (torch.rand(B, C, T, generator=g) > 0.7).float() * mask.unsqueeze(1)
    batch["mask"] = mask
    batch["meta"] = {
        "video_id": [f"v{i}" for i in range(B)],
        "duration": torch.tensor([float(n) for n in lengths]),
        "length": torch.tensor(lengths),
        "offset": torch.zeros(B, dtype=torch.long),
        "segments": [torch.zeros(0, 3).numpy() for _ in range(B)],
    }
    return batch


def _module(cls=DetectorModule, **kw) -> DetectorModule:
    kw.setdefault("head", TINY_HEAD)
    kw.setdefault("num_classes", 4)
    kw.setdefault("modality_dims", DIMS)
    return instantiate(cls, **kw)


@pytest.mark.parametrize("lengths", [(20, 20, 20), (20, 13, 7), (1, 20, 2)])
def test_masked_bce_matches_hand_computation(lengths):
    b = _batch(lengths=lengths)
    logits = torch.randn(3, 4, 20)
    got = masked_bce(logits, b["labels"], b["mask"])
    terms = [
        F.binary_cross_entropy_with_logits(logits[i, :, :n], b["labels"][i, :, :n], reduction="sum")
        for i, n in enumerate(lengths)
    ]
    expected = sum(terms) / (sum(lengths) * 4)
    torch.testing.assert_close(got, expected)
    # garbage on padded steps changes nothing
    logits2 = logits.clone()
    logits2[~b["mask"].unsqueeze(1).expand_as(logits2)] = 1e3
    torch.testing.assert_close(masked_bce(logits2, b["labels"], b["mask"]), got)


@pytest.mark.parametrize("fusion,mid_op", [("early", "sum"), ("mid", "sum"), ("mid", "concat"), ("late", "sum")])
def test_teacher_fusions_shapes_and_padding(fusion, mid_op):
    torch.manual_seed(0)
    teacher = _module(TeacherModule, modalities=["rgb", "flow", "pose"], fusion=fusion, mid_op=mid_op, embed_dim=8).eval()
    b = _batch()
    out = teacher(b)
    expected_f = 16 * 3 if fusion == "late" else 16
    assert teacher.feature_dim == expected_f
    assert out.features.shape == (3, expected_f, 20) and out.logits.shape == (3, 4, 20)
    # valid steps unchanged when the batch carries extra padding with garbage in it
    b2 = {k: v for k, v in b.items()}
    for m in DIMS:
        b2[m] = torch.cat([b[m], torch.randn(3, DIMS[m], 9) * 50], dim=2)
    b2["mask"] = torch.cat([b["mask"], torch.zeros(3, 9, dtype=torch.bool)], dim=1)
    out2 = teacher(b2)
    for i, n in enumerate((20, 13, 7)):
        torch.testing.assert_close(out2.logits[i, :, :n], out.logits[i, :, :n], atol=1e-5, rtol=1e-5)


def test_late_fusion_averages_logits_of_per_modality_heads():
    teacher = _module(TeacherModule, modalities=["rgb", "flow"], fusion="late").eval()
    b = _batch()
    out = teacher(b)
    per = [teacher.heads[m](b[m], b["mask"]) for m in ("rgb", "flow")]
    torch.testing.assert_close(out.logits, (per[0].logits + per[1].logits) / 2)
    torch.testing.assert_close(out.features, torch.cat([per[0].features, per[1].features], dim=1))


def test_bad_fusion_and_missing_dims_are_clear():
    with pytest.raises(ValueError, match="fusion must be one of"):
        _module(TeacherModule, fusion="sideways")
    with pytest.raises(ValueError, match="dims unknown for modalities \\['depth'\\]"):
        _module(TeacherModule, modalities=["rgb", "depth"])
    with pytest.raises(ValueError, match="num_classes must be positive"):
        _module(num_classes=0)


class DepthTeacher(TeacherModule):
    """The README's example of a new modality teacher."""

    @classmethod
    def default_modalities(cls) -> list[str]:
        return ["rgb", "depth"]

    def build_encoder(self, modality: str, in_dim: int) -> tuple[nn.Module, int]:
        if modality == "depth":
            return nn.Sequential(nn.Conv1d(in_dim, 8, 1), nn.ReLU()), 8
        return super().build_encoder(modality, in_dim)


def test_subclassed_teacher_names_modalities_and_encodes(tmp_path):
    dims = {"rgb": 12, "depth": 5}
    teacher = instantiate(DepthTeacher, head=TINY_HEAD, num_classes=4, modality_dims=dims)
    assert teacher.modalities == ["rgb", "depth"]
    assert teacher.head.in_dim == 12 + 8  # the depth encoder's output width reached the head
    b = _batch()
    b["depth"] = b.pop("pose")
    out = teacher(b)
    assert out.logits.shape == (3, 4, 20)


def test_checkpoint_rebuilds_module_without_yaml(tmp_path):
    torch.manual_seed(0)
    teacher = _module(TeacherModule, modalities=["rgb", "flow"], fusion="mid", embed_dim=8)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(teacher)
    path = tmp_path / "t.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_detector(path)
    assert type(loaded) is TeacherModule and loaded.fusion == "mid" and loaded.embed_dim == 8
    b = _batch()
    torch.testing.assert_close(loaded(b).logits, teacher.eval()(b).logits)
    # asking for the wrong kind is a clear error naming the file
    from kd_detect.modules import StudentModule

    with pytest.raises(CheckpointError, match="is a TeacherModule checkpoint, expected a StudentModule"):
        load_detector(path, expect=StudentModule)
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt: not a readable"):
        load_detector(bad)
