"""``kd-detect diagnose``: atomic-contrast retrieval rates of a trained student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from kd_detect.apps.diagnose import alignment, atomic_retrieval, main, retrieval_rates, term_gradients
from kd_detect.data.format import VideoRecord, write_feature_file
from kd_detect.distill import AtomicContrastive
from kd_detect.errors import UsageError
from kd_detect.models.heads.base import HeadOutput
from kd_detect.modules import StudentModule, TeacherModule, instantiate


def test_retrieval_rates_hand_computed():
    # 4 atoms, videos [0, 0, 1, 1]; similarity rows decide the retrievals
    q = torch.eye(4)
    k = torch.tensor([[1.0, 0, 0, 0],    # atom 0 -> 0 (right)
                      [0, 0, 1.0, 0],    # atom 1's key looks like atom 2's query...
                      [0, 0.9, 0, 0],    # atom 2 -> key 1 over the batch (wrong video)
                      [0, 0, 0, 1.0]])   # atom 3 -> 3 (right)
    # sim = q @ k.T = k.T: row i = column i of k
    r = retrieval_rates(q, k, torch.tensor([0, 0, 1, 1]))
    # top over batch: row0 -> 0, row1 -> 2, row2 -> 1, row3 -> 3
    assert r["n"] == 4 and r["top1_batch"] == 2
    assert r["top1_video"] == 2  # rows 1 and 2 land in the other video
    # within video: row1 among {0,1}: sims (0, 0) -> argmax 0 (wrong); row2 among {2,3}: (0, 0) -> 2 (right)
    assert r["top1_within"] == 3
    assert r["chance_within"] == pytest.approx(4 * 0.5)


def test_identical_embeddings_retrieve_perfectly():
    q = torch.nn.functional.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    r = retrieval_rates(q, q.clone(), torch.arange(12) // 4)
    assert r["top1_batch"] == r["top1_video"] == r["top1_within"] == 12


def test_alignment_hand_computed():
    val = torch.tensor([1.0, 0.0])
    out = alignment(val, {"bce": torch.tensor([1.0, 1.0]), "atomic": torch.tensor([-2.0, 0.0]),
                          "global": torch.zeros(2)})
    assert out["bce"] == {"cos_val": pytest.approx(2 ** -0.5), "cos_bce": pytest.approx(1.0), "norm_ratio": 1.0}
    assert out["atomic"] == {"cos_val": pytest.approx(-1.0), "cos_bce": pytest.approx(-(2 ** -0.5)),
                             "norm_ratio": pytest.approx(2 ** 0.5)}
    assert out["global"] == {"cos_val": 0.0, "cos_bce": 0.0, "norm_ratio": 0.0}  # neither for nor against
    # total = (-1, 1): half-way against the validation direction, as long as the BCE's
    assert out["total"]["cos_val"] == pytest.approx(-(2 ** -0.5))
    assert out["total"]["norm_ratio"] == pytest.approx(1.0)
    assert out["total"]["cos_bce"] == pytest.approx(0.0)  # (-1, 1) is orthogonal to (1, 1)


def _tiny_student(tmp_path, distill, subsets=("training", "validation", "testing")):
    rng = np.random.default_rng(0)
    dims = {"rgb": 8, "flow": 4}
    videos = [VideoRecord(f"v{i}", subsets[i % len(subsets)], 30.0,
                          {m: rng.standard_normal((30, d)).astype(np.float32) for m, d in dims.items()},
                          np.array([[i % 2, 2.0 + i, 9.0 + i]]))
              for i in range(9)]
    data = write_feature_file(tmp_path / "d.h5", ["a", "b"], list(dims), videos, dtype="float32")
    common = {"head": {"class_path": "kd_detect.models.heads.TCN", "init_args": {"hidden": 8}},
              "num_classes": 2, "classes": ["a", "b"], "modality_dims": dims}
    _save(instantiate(TeacherModule, modalities=["rgb", "flow"], **common), tmp_path / "t" / "best.ckpt")
    student = instantiate(StudentModule, modalities=["rgb"], teachers={"teacher": str(tmp_path / "t" / "best.ckpt")},
                          distill=distill, **common)
    return student, data


def _save(module, path):
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)


def test_term_gradients_properties(tmp_path):
    """On the training batches themselves as validation, the BCE's gradient is the
    validation gradient (cos 1); a term's gradient scales with its weight and keeps its
    direction; the plugin heads are not among the parameters."""
    from kd_detect.data.feature_data import FeatureData

    torch.manual_seed(0)
    distill = {"logit": {"class_path": "kd_detect.distill.LogitKD", "init_args": {"weight": 1.0}}}
    student, path = _tiny_student(tmp_path, distill)
    data = FeatureData(str(path), modalities=["flow", "rgb"], batch_size=2, eval_batch_size=2)
    train = list(data.loader("train"))
    one = term_gradients(student, train, train)
    assert one["batches"] == (len(train), len(train)) and set(one["terms"]) == {"bce", "logit"}
    n_params = sum(p.numel() for n, p in student.named_parameters() if not n.startswith("distill."))
    assert one["val"].shape == (n_params,)
    res = alignment(one["val"], one["terms"])
    assert res["bce"]["cos_val"] == pytest.approx(1.0, abs=1e-5)
    student.distill["teacher"]["logit"].weight = 3.0
    three = term_gradients(student, train, train)
    assert one["weights"] == {"logit": 1.0} and three["weights"] == {"logit": 3.0}
    torch.testing.assert_close(three["terms"]["logit"], 3.0 * one["terms"]["logit"])
    torch.testing.assert_close(three["terms"]["bce"], one["terms"]["bce"])
    # the validation gradient is the mean of the per-batch gradients: check against one batch at a time
    assert len(train) == 2
    per = [term_gradients(student, [b], [b])["val"] for b in train]
    torch.testing.assert_close(one["val"], torch.stack(per).mean(0))


def test_cli_gradients_on_a_student_run(tmp_path, capsys):
    distill = {"atomic": {"class_path": "kd_detect.distill.AtomicContrastive", "init_args": {"window": 3}},
               "global": {"class_path": "kd_detect.distill.GlobalContextualRelation", "init_args": {"weight": 0.5}}}
    student, path = _tiny_student(tmp_path, distill)
    run = tmp_path / "kd"
    _save(student, run / "best.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"path": str(path)}}))
    assert main([str(run), "--gradients", "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batches"] == {"training": 2, "validation": 2}
    assert out["weights"] == {"atomic": 1.0, "global": 0.5}
    assert set(out["terms"]) == {"bce", "atomic", "global", "total"}
    assert out["terms"]["bce"]["norm_ratio"] == 1.0
    assert all(-1.0 <= t["cos_val"] <= 1.0 for t in out["terms"].values())


def test_cli_on_a_student_run(tmp_path, capsys):
    rng = np.random.default_rng(0)
    dims = {"rgb": 8, "flow": 4}
    videos = [VideoRecord(f"v{i}", "testing", 30.0, {m: rng.standard_normal((30, d)).astype(np.float32)
                                                      for m, d in dims.items()}, np.array([[0, 2.0, 9.0]]))
              for i in range(3)]
    data = write_feature_file(tmp_path / "d.h5", ["a", "b"], list(dims), videos, dtype="float32")
    common = {"head": {"class_path": "kd_detect.models.heads.TCN", "init_args": {"hidden": 8}},
              "num_classes": 2, "classes": ["a", "b"], "modality_dims": dims}
    _save(instantiate(TeacherModule, modalities=["rgb", "flow"], **common), tmp_path / "t" / "best.ckpt")
    student = instantiate(StudentModule, modalities=["rgb"], teachers={"teacher": str(tmp_path / "t" / "best.ckpt")},
                          distill={"atomic": {"class_path": "kd_detect.distill.AtomicContrastive",
                                              "init_args": {"window": 3}}}, **common)
    run = tmp_path / "kd"
    _save(student, run / "best.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"path": str(data)}}))
    assert main([str(run), "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["atoms"] == 3 * 10
    assert 0 <= out["top1_batch"] <= out["top1_video"] <= 1 and 0 <= out["top1_within"] <= 1
    assert out["chance_within"] == pytest.approx(0.1)
    with pytest.raises(SystemExit) as exc:
        main([str(run), "--plugin", "global"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("kd-detect diagnose: error: ") and "no plugin teacher/global" in err


class _Features(torch.nn.Module):
    """Per-step one-hot features (distinct for every valid step of the batch)."""

    def forward(self, batch):
        B, T = batch["mask"].shape
        feats = torch.eye(B * T).reshape(B, T, B * T).transpose(1, 2)  # (B, F=B*T, T)
        return HeadOutput(features=feats, logits=torch.zeros(B, 1, T))


class _Student(_Features):
    def __init__(self, plugin, teachers):
        super().__init__()
        self.distill = torch.nn.ModuleDict({"teacher": torch.nn.ModuleDict({"atomic": plugin})})
        self.teachers = teachers


class _Data:
    def loader(self, stage):
        assert stage == "test"
        return [{"mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)}]


def test_per_step_atoms_retrieve_perfectly_when_student_equals_teacher():
    """window=1: atoms are the 5 valid steps, their videos come from the mask; with equal
    features and identical projections every atom retrieves itself."""
    plugin = AtomicContrastive(window=1, embed_dim=8)
    plugin.build(8, 8, 1)
    plugin.proj_t.load_state_dict(plugin.proj_s.state_dict())
    out = atomic_retrieval(_Student(plugin, {"teacher": _Features()}), _Data())
    assert out["atoms"] == 5
    assert out["top1_batch"] == out["top1_video"] == out["top1_within"] == 1.0
    assert out["chance_within"] == pytest.approx((3 * (1 / 3) + 2 * (1 / 2)) / 5)
    assert plugin.max_atoms == 1024  # the plugin is not changed (a copy samples every atom)


def test_student_without_the_teacher_loaded_is_refused():
    plugin = AtomicContrastive(window=2)
    plugin.build(8, 8, 1)
    with pytest.raises(UsageError, match="teacher .teacher. is not loaded"):
        atomic_retrieval(_Student(plugin, {}), _Data())
