"""Distillation weight schedules (time, not loss: DESIGN.md §2).

Each schedule owns one factor in ``StudentModule.distill_factors``; the module's
``distill_scale`` is their product and multiplies every distillation term. A scale of 0
skips the plugins and the teacher forward entirely. Schedules therefore compose
(warm-up then stop) in any callback order.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning import Callback


def _set(pl_module: Any, name: str, value: float) -> None:
    if not hasattr(pl_module, "distill_factors"):
        raise TypeError(f"{name} only applies to a StudentModule, got {type(pl_module).__name__}")
    pl_module.distill_factors[name] = float(value)


class DistillationWarmup(Callback):
    """Linear warm-up of all distillation weights: factor ``min(1, (s + 1) / warmup_steps)``
    at optimiser step ``s``, or ``min(1, (e + 1) / warmup_epochs)`` at epoch ``e``."""

    def __init__(self, warmup_steps: int = 0, warmup_epochs: int = 0) -> None:
        if bool(warmup_steps) == bool(warmup_epochs):
            raise ValueError("DistillationWarmup: give exactly one of warmup_steps, warmup_epochs (> 0)")
        self.warmup_steps, self.warmup_epochs = warmup_steps, warmup_epochs

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.warmup_steps:
            factor = min(1.0, (trainer.global_step + 1) / self.warmup_steps)
        else:
            factor = min(1.0, (trainer.current_epoch + 1) / self.warmup_epochs)
        _set(pl_module, "warmup", factor)


class StopDistillation(Callback):
    """From epoch ``epoch`` on (0-based), train on the detection loss only."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        _set(pl_module, "stop", 0.0 if trainer.current_epoch >= self.epoch else 1.0)
