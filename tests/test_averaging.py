"""kd_detect.callbacks.EMA: the average by hand, the test after fit scoring the average (the
stock Lightning callback scores the raw weights there), resume, and a student's teachers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from kd_detect.apps.lightning import lightning_main
from kd_detect.callbacks import EMA, RunCheckpoint
from kd_detect.callbacks.averaging import ema_decay
from kd_detect.data.batch import LABELS, MASK, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.errors import UsageError
from kd_detect.metrics import FrameMAP
from kd_detect.modules import DetectorModule, load_detector

ROOT = Path(__file__).resolve().parents[1]


def test_decay_has_the_time_constant_in_epochs():
    assert ema_decay(10, 18) == pytest.approx(math.exp(-1 / 180), rel=1e-15)
    # after `epochs` epochs, a weight's share of the average has fallen by a factor e
    assert ema_decay(2.5, 40) ** 100 == pytest.approx(math.exp(-1), rel=1e-12)
    for bad in ({"epochs": 0}, {"decay": 1.0}, {"decay": 0.0}, {"epochs": 3, "decay": 0.9}):
        with pytest.raises(UsageError, match="EMA"):
            EMA(**bad)
    assert EMA().epochs == 10.0


class Drift(pl.LightningModule):
    """One weight moved by SGD with a constant gradient: after step k it is ``w0 - lr·g·k``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, idx):
        return (self.w * torch.tensor([0.5, 1.5])).sum()  # gradient (0.5, 1.5)

    def on_train_batch_end(self, outputs, batch, idx):
        self.seen.append(self.w.detach().clone())  # the raw weights after each step

    def validation_step(self, batch, idx):
        self.log("val/frame_map", -self.w.sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("kwargs, decay", [({"decay": 0.8}, 0.8), ({"epochs": 2}, math.exp(-1 / 6))])
def test_the_checkpoint_holds_the_average_computed_by_hand(tmp_path, kwargs, decay):
    loader = torch.utils.data.DataLoader(torch.zeros(3, 1), batch_size=1)  # 3 steps per epoch
    ema, model = EMA(**kwargs), Drift()
    trainer = pl.Trainer(max_epochs=2, callbacks=[ema, RunCheckpoint()], default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, loader, loader)
    assert ema.decay == pytest.approx(decay, rel=1e-15)
    raw = model.seen
    assert len(raw) == 6 and torch.allclose(raw[-1], torch.tensor([1.0, -2.0]) - 0.1 * 6 * torch.tensor([0.5, 1.5]))
    average = raw[0].clone()  # the first update copies the weights
    for w in raw[1:]:
        average = decay * average + (1 - decay) * w
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    torch.testing.assert_close(last["state_dict"]["w"], average)
    torch.testing.assert_close(last["current_model_state"]["w"], raw[-1])
    torch.testing.assert_close(model.w.detach(), average)  # after fit the module holds the average


def _score(module: DetectorModule, data: Path) -> float:
    dm = FeatureDataModule(str(data), batch_size=4)
    dm.setup("test")
    metric = FrameMAP(module.num_classes)
    module.eval()
    with torch.no_grad():
        for batch in map(to_model_layout, dm.test_dataloader()):
            metric.update(torch.sigmoid(module(batch).logits.float()), batch[LABELS], batch[MASK])
    return float(metric.compute()["map"])


def _fit(data: Path, root: Path, callback: str, *extra: str) -> None:
    lightning_main([
        "fit", "--config", str(ROOT / "experiments/synthetic_rgb.yaml"), f"--data.path={data}",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.logger=false", "--trainer.deterministic=true",
        "--model.init_args.head.init_args.hidden=16", "--model.init_args.head.init_args.num_layers=2",
        "--model.init_args.lr=3e-3", "--seed_everything=1",
        "--trainer.callbacks=[{class_path: kd_detect.callbacks.RunCheckpoint}, "
        "{class_path: kd_detect.callbacks.RunReport}, {class_path: kd_detect.callbacks.EpochSeed}]",
        f"--trainer.callbacks+={callback}", *extra,
    ])


@pytest.mark.parametrize("callback", ["kd_detect.callbacks.EMA", "pytorch_lightning.callbacks.EMAWeightAveraging"])
def test_the_test_after_fit_scores_the_average(synthetic_h5, tmp_path, callback):
    """``fit --test_after_fit`` with ours tests the averaged weights of best.ckpt; with
    Lightning's own callback the same command tests the raw weights (why ours exists)."""
    _fit(synthetic_h5, tmp_path, callback, "--trainer.max_epochs=4", "--test_after_fit=true",
         "--trainer.callbacks.decay=0.9")
    tested = json.loads((tmp_path / "metrics.json").read_text())["test/frame_map"]
    averaged = load_detector(tmp_path / "best.ckpt")
    raw = load_detector(tmp_path / "best.ckpt")
    raw.load_state_dict(torch.load(tmp_path / "best.ckpt", weights_only=False)["current_model_state"])
    score_avg, score_raw = _score(averaged, synthetic_h5), _score(raw, synthetic_h5)
    assert abs(score_avg - score_raw) > 1e-4  # the two differ, so the check below can fail
    expected = score_avg if callback.startswith("kd_detect") else score_raw
    assert tested == pytest.approx(expected, abs=1e-6)


def test_a_resumed_fit_ends_with_the_same_average(synthetic_h5, tmp_path):
    args = ["--data.max_steps=32", "--trainer.callbacks.epochs=1.5"]
    _fit(synthetic_h5, tmp_path / "full", "kd_detect.callbacks.EMA", "--trainer.max_epochs=4", *args)
    _fit(synthetic_h5, tmp_path / "cut", "kd_detect.callbacks.EMA", "--trainer.max_epochs=2", *args)
    _fit(synthetic_h5, tmp_path / "cut", "kd_detect.callbacks.EMA", "--trainer.max_epochs=4", *args,
         f"--ckpt_path={tmp_path / 'cut' / 'last.ckpt'}")
    full = torch.load(tmp_path / "full" / "last.ckpt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=False)
    assert full["epoch"] == cut["epoch"] == 3
    for part in ("state_dict", "current_model_state"):
        for key, value in full[part].items():
            torch.testing.assert_close(cut[part][key], value, rtol=0, atol=0, msg=f"{part} {key}")
    assert not torch.equal(full["state_dict"]["head.classifier.weight"],
                           full["current_model_state"]["head.classifier.weight"])


def test_a_students_teachers_stay_out_of_the_average(tmp_path):
    from tests.test_student import _student, _trainer, _write

    data = _write(tmp_path / "d.h5")
    dm = FeatureDataModule(str(data), batch_size=4)
    from kd_detect.modules import TeacherModule, instantiate
    from tests.helpers import TINY_HEAD

    teacher = instantiate(TeacherModule, head=TINY_HEAD, modalities=["rgb", "flow"], num_classes=dm.num_classes,
                          classes=dm.classes, modality_dims=dm.modality_dims)
    trainer = _trainer(max_epochs=1)
    trainer.fit(teacher, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    student = _student({"ckpt": tmp_path / "t.ckpt"}, dm)
    factory = student.head_factory
    with student.set_aside_for_copy():
        assert student.teachers == {} and not hasattr(student, "head_factory")
    assert list(student.teachers) == ["t"] and student.head_factory is factory
    ema = EMA(epochs=1)
    trainer = _trainer(max_epochs=2, callbacks=[ema])
    trainer.fit(student, datamodule=dm)
    assert ema._average_model.module.teachers == {} and list(student.teachers) == ["t"]
    assert ema.decay == pytest.approx(math.exp(-1))  # 4 training videos (1 held out) in batches of 4: 1 step
