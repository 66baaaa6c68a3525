"""EMA: validate, checkpoint and test an exponential moving average of the weights.

Lightning's :class:`~pytorch_lightning.callbacks.EMAWeightAveraging` keeps the average
(``torch.optim.swa_utils.AveragedModel``), swaps it in for every validation epoch and saves
it as the checkpoint's ``state_dict`` (the raw weights go to ``current_model_state``, for
resuming). This subclass changes three things:

* **The test after fit reads the average.** The stock callback, still attached when
  ``fit --test_after_fit=true`` calls ``trainer.test(ckpt_path="best")`` in the same
  process, restores ``current_model_state`` on load, so the test scores the *raw* weights of
  the epoch the average was chosen at. Here the raw weights are restored only to resume a
  fit; validating, testing and predicting use the checkpoint's ``state_dict`` -- the
  average -- as ``kd-detect test``, ``predict`` and ``export`` in a new process do.
* **The time constant is in epochs,** so one setting means the same on 144 videos and on
  8,000. The per-step decay is ``exp(-1 / (epochs · steps per epoch))``, fixed when
  training starts; ``decay`` sets it directly instead.
* **Only the weights are copied.** The average is a deep copy of the module; what a
  detector only needed to be built (its head factory, which under DDP holds a lock and
  cannot be copied) and a student's frozen teachers and teacher caches (outside the module
  tree, never averaged, possibly large) are kept out of it by the module's
  :meth:`~kd_detect.modules.DetectorModule.set_aside_for_copy`.

Buffers are averaged with the weights (Lightning's default): the input standardisation is
fixed after the first step, and an ``auto`` loss weight's state is only read in training.

YAML (a trainer callback; ``kd_detect.callbacks.EMA`` on the command line with
``--trainer.callbacks+=``)::

    trainer:
      callbacks:
        - class_path: kd_detect.callbacks.EMA
          init_args:
            epochs: 10      # time constant of the average, in training epochs

Measured on the synthetic benchmark: docs/results.md, "Averaging the weights".
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_avg_fn

from kd_detect.errors import UsageError


def ema_decay(epochs: float, steps_per_epoch: float) -> float:
    """The per-step decay whose time constant is ``epochs`` epochs of ``steps_per_epoch``
    optimiser steps: ``exp(-1 / (epochs · steps_per_epoch))``."""
    return math.exp(-1.0 / (epochs * max(1.0, steps_per_epoch)))


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights, used for validation, checkpoints and test.

    Args:
        epochs: time constant of the average in training epochs (default 10).
        decay: the per-step decay instead (``0 < decay < 1``); give one of the two.
        update_starting_at_step, update_starting_at_epoch, update_every_n_steps, device:
            as :class:`~pytorch_lightning.callbacks.EMAWeightAveraging`.
    """

    def __init__(
        self,
        epochs: float | None = None,
        decay: float | None = None,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        update_every_n_steps: int = 1,
        device: str | None = None,
    ) -> None:
        if epochs is not None and decay is not None:
            raise UsageError(f"EMA: give epochs ({epochs}) or decay ({decay}), not both")
        if epochs is None and decay is None:
            epochs = 10.0
        if epochs is not None and not epochs > 0:
            raise UsageError(f"EMA: epochs must be > 0, got {epochs}")
        if decay is not None and not 0.0 < decay < 1.0:
            raise UsageError(f"EMA: decay must be in (0, 1), got {decay}")
        if update_every_n_steps < 1:
            raise UsageError(f"EMA: update_every_n_steps must be >= 1, got {update_every_n_steps}")
        super().__init__(
            device=device,
            decay=0.5 if decay is None else decay,  # replaced in on_train_start when epochs is given
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
        )
        self.epochs = epochs
        self.decay = decay

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        set_aside = getattr(pl_module, "set_aside_for_copy", nullcontext)
        with set_aside():
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epochs is not None:
            batches = trainer.num_training_batches
            if not math.isfinite(batches):
                raise UsageError("EMA: epochs needs a sized training loader; give decay instead")
            steps = math.ceil(batches / trainer.accumulate_grad_batches) / self.update_every_n_steps
            self.decay = ema_decay(self.epochs, steps)
        assert self._average_model is not None
        self._average_model.avg_fn = get_ema_avg_fn(decay=self.decay)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Resuming a fit restores the raw weights and the average; anything else (the test
        # after fit, validate, predict) keeps the checkpoint's state_dict: the average.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
