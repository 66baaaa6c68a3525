"""The detectors' learning-rate schedules (``DetectorModule(lr_schedule=...)``): the cosine
factor by hand, the rate a fit actually steps with, and the refusals."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl

from kd_detect.data import FeatureDataModule
from kd_detect.errors import UsageError
from kd_detect.modules import DetectorModule, instantiate
from kd_detect.modules.detector import cosine_factor
from tests.helpers import TINY_HEAD


def test_cosine_factor_by_hand():
    # no warm-up, 4 steps: 1, (1 + cos(pi/4))/2, 1/2, (1 - cos(pi/4))/2, then 0 from the end on
    c = math.cos(math.pi / 4)
    expected = [1.0, (1 + c) / 2, 0.5, (1 - c) / 2, 0.0, 0.0]
    assert [cosine_factor(s, 4) for s in range(6)] == pytest.approx(expected, abs=1e-12)
    # 2 warm-up steps of 6: 0, 1/2, then the same half cosine over the remaining 4
    assert [cosine_factor(s, 6, 2) for s in range(7)] == pytest.approx([0.0, 0.5] + expected[:5], abs=1e-12)
    # monotone after the warm-up, within [0, 1]
    values = [cosine_factor(s, 50, 5) for s in range(5, 51)]
    assert all(a >= b for a, b in zip(values, values[1:])) and values[0] == 1.0 and values[-1] == 0.0


class _Rates(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(path, epochs: int, **kw) -> tuple[DetectorModule, _Rates]:
    dm = FeatureDataModule(path, modalities=["rgb"], batch_size=4)
    module = instantiate(DetectorModule, head=TINY_HEAD, num_classes=dm.num_classes,
                         modality_dims=dm.modality_dims, lr=0.01, **kw)
    rates = _Rates()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[rates])
    trainer.fit(module, datamodule=dm)
    return module, rates


def test_a_cosine_fit_steps_with_the_schedule_and_ends_at_zero(synthetic_h5):
    # 3 epochs x 2 batches = 6 optimiser steps, 1 epoch (2 steps) of warm-up
    module, rates = _fit(synthetic_h5, 3, lr_schedule="cosine", warmup_epochs=1)
    expected = [0.01 * cosine_factor(s, 6, 2) for s in range(6)]
    assert rates.rates == pytest.approx(expected, abs=1e-12)
    assert rates.rates[2] == pytest.approx(0.01) and rates.rates[1] == pytest.approx(0.005)
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_the_plateau_schedule_is_the_default_and_follows_validation(synthetic_h5):
    module, rates = _fit(synthetic_h5, 1, lr_patience=1, lr_factor=0.25)
    assert module.lr_schedule == "plateau"
    assert rates.rates == [0.01, 0.01]  # constant within the epoch: no per-step schedule
    (config,) = module.trainer.lr_scheduler_configs
    assert config.monitor == "val/loss" and config.interval == "epoch"
    # the configured scheduler follows the monitored value with the module's factor and
    # patience: an improvement keeps the rate, one epoch without improvement (patience 1)
    # keeps it, the second multiplies it by 0.25
    scheduler, group = config.scheduler, module.trainer.optimizers[0].param_groups[0]
    group["lr"] = 0.01
    scheduler.best, scheduler.num_bad_epochs = float("inf"), 0
    for loss, expected in [(1.0, 0.01), (0.5, 0.01), (0.6, 0.01), (0.7, 0.0025)]:
        scheduler.step(loss)
        assert group["lr"] == pytest.approx(expected), (loss, group["lr"])


def test_bad_schedules_are_refused(synthetic_h5):
    dm = FeatureDataModule(synthetic_h5, modalities=["rgb"])
    make = lambda **kw: instantiate(DetectorModule, head=TINY_HEAD, num_classes=dm.num_classes,  # noqa: E731
                                    modality_dims=dm.modality_dims, **kw)
    with pytest.raises(ValueError, match=r"DetectorModule: lr_schedule must be one of \('plateau', 'cosine'\), got 'step'"):
        make(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0 and is for lr_schedule 'cosine' only"):
        make(warmup_epochs=1)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        make(lr_schedule="cosine", warmup_epochs=-1)
    module = make(lr_schedule="cosine", warmup_epochs=1)
    trainer = pl.Trainer(max_epochs=-1, max_steps=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_train_batches=1)
    with pytest.raises(UsageError, match="lr_schedule 'cosine' needs a fit of known length"):
        trainer.fit(module, datamodule=dm)
