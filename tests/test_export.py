"""``kd-detect export``: TorchScript + state file of the bare RGB detector, refusals."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from kd_detect.apps.export import main
from kd_detect.modules import DetectorModule, StudentModule, TeacherModule, instantiate
from kd_detect.modules.deploy import load_state, state_path
from tests.helpers import one_line_failure

DIMS = {"rgb": 12, "flow": 6}
CLASSES = ["walk", "sit", "drink", "read"]
HEADS = {
    "PDAN": {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 16, "num_layers": 2}},
    "MSTCN": {"class_path": "kd_detect.models.heads.MSTCN", "init_args": {"hidden": 16, "num_layers": 3, "num_stages": 2}},
    "TCN": {"class_path": "kd_detect.models.heads.TCN", "init_args": {"hidden": 16, "num_layers": 2}},
    "Decomposed": {"class_path": "kd_detect.models.heads.Decomposed", "init_args": {"hidden": 16, "num_layers": 2}},
}
ATOMIC = {"class_path": "kd_detect.distill.AtomicContrastive", "init_args": {"weight": 1.0}}


def save(module, path) -> str:
    """Write a checkpoint of an untrained module (as the CLI would, hparams included)."""
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


def randomise(module) -> None:
    """Move every parameter away from its init so a wrong weight mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def student(head: dict) -> StudentModule:
    torch.manual_seed(0)
    # teacher_dims instead of a live teacher: the distillation heads exist and are saved,
    # exactly as in a trained student's checkpoint
    module = instantiate(
        StudentModule, head=head, modalities=["rgb"], num_classes=len(CLASSES), classes=CLASSES,
        modality_dims=DIMS, teacher_dims={"t": 24}, distill={"atomic": ATOMIC},
    )
    randomise(module)
    return module.eval()


def reference(module, rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(module({"rgb": rgb, "mask": mask}).logits) * mask.unsqueeze(1)


@pytest.mark.parametrize("name", list(HEADS))
def test_exported_student_matches_module_on_variable_lengths(name, tmp_path, capsys):
    module = student(HEADS[name])
    assert any(k.startswith("distill.t.atomic") for k in module.state_dict())
    ckpt = save(module, tmp_path / "student.ckpt")
    out = tmp_path / "deploy" / "student.pt"
    assert main(["--ckpt", ckpt, "--out", str(out)]) == 0
    assert "student.state.pt" in capsys.readouterr().out
    model = torch.jit.load(str(out))
    assert list(model.classes) == CLASSES and model.in_dim == DIMS["rgb"]
    g = torch.Generator().manual_seed(3)
    for T in (1, 2, 7, 40):  # lengths never seen at export time
        rgb = torch.randn(2, DIMS["rgb"], T, generator=g)
        full = torch.ones(2, T, dtype=torch.bool)
        got = model(rgb)
        assert got.shape == (2, len(CLASSES), T)
        torch.testing.assert_close(got, reference(module, rgb, full), atol=1e-5, rtol=0)
    # a padded batch: valid steps as for each video alone, padding exactly 0
    lengths = (40, 9, 1)
    mask = torch.zeros(3, 40, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    rgb = torch.randn(3, DIMS["rgb"], 40, generator=g) * mask.unsqueeze(1)
    got = model(rgb, mask)
    for i, n in enumerate(lengths):
        alone = reference(module, rgb[i : i + 1, :, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(got[i : i + 1, :, :n], alone, atol=1e-5, rtol=0)
        assert torch.all(got[i, :, n:] == 0)
    # the state file: no teacher, no projection head; rebuilds the same model
    state = torch.load(state_path(out), map_location="cpu", weights_only=False)
    assert state["head"] == HEADS[name] and state["classes"] == CLASSES
    assert state["in_dim"] == DIMS["rgb"] and state["num_classes"] == len(CLASSES)
    assert set(state["state_dict"]) == {f"head.{k}" for k in module.head.state_dict()}
    rebuilt = load_state(state_path(out))
    torch.testing.assert_close(rebuilt(rgb, mask), got, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", ["mid", "late"])
def test_rgb_only_teacher_can_be_exported(fusion, tmp_path):
    torch.manual_seed(0)
    teacher = instantiate(
        TeacherModule, head=HEADS["PDAN"], modalities=["rgb"], num_classes=len(CLASSES), classes=CLASSES,
        modality_dims=DIMS, fusion=fusion, embed_dim=8,
    )
    randomise(teacher)
    out = tmp_path / "t.pt"
    assert main(["--ckpt", save(teacher, tmp_path / "t.ckpt"), "--out", str(out)]) == 0
    rgb = torch.randn(2, DIMS["rgb"], 11)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 6:] = False
    rgb = rgb * mask.unsqueeze(1)
    expected = reference(teacher.eval(), rgb, mask)
    torch.testing.assert_close(torch.jit.load(str(out))(rgb, mask), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(load_state(state_path(out))(rgb, mask), expected, atol=1e-5, rtol=0)


def _fails(argv, capsys) -> str:
    return one_line_failure(main, argv, capsys)


def test_multimodal_teacher_is_refused(tmp_path, capsys):
    teacher = instantiate(
        TeacherModule, head=HEADS["TCN"], modalities=["rgb", "flow"], num_classes=len(CLASSES), classes=CLASSES,
        modality_dims=DIMS,
    )
    ckpt = save(teacher, tmp_path / "teacher.ckpt")
    out = tmp_path / "x.pt"
    err = _fails(["--ckpt", ckpt, "--out", str(out)], capsys)
    assert err.startswith("kd-detect export: error: ") and "teacher.ckpt" in err
    assert "TeacherModule" in err and "['rgb', 'flow']" in err and "RGB-only" in err
    assert not out.exists() and not state_path(out).exists()
    # a multi-modal detector is refused the same way
    detector = instantiate(DetectorModule, head=HEADS["TCN"], modalities=["rgb", "flow"], num_classes=4, modality_dims=DIMS)
    err = _fails(["--ckpt", save(detector, tmp_path / "d.ckpt"), "--out", str(out)], capsys)
    assert "DetectorModule" in err and "['rgb', 'flow']" in err


def test_missing_and_unreadable_checkpoints_are_one_line(tmp_path, capsys):
    err = _fails(["--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x.pt")], capsys)
    assert "nope.ckpt: checkpoint not found" in err
    bad = tmp_path / "bad.ckpt"
    bad.write_text("hello")
    err = _fails(["--ckpt", str(bad), "--out", str(tmp_path / "x.pt")], capsys)
    assert "bad.ckpt: not a readable" in err
    with pytest.raises(SystemExit) as exc:  # a usage error is argparse's (exit 2)
        main(["--out", "x.pt"])
    assert exc.value.code == 2


def test_state_path_naming(tmp_path):
    assert state_path("a/student.pt").name == "student.state.pt"
    assert state_path("model").name == "model.state.pt"
    with pytest.raises(Exception, match="state file not found"):
        load_state(tmp_path / "missing.state.pt")
