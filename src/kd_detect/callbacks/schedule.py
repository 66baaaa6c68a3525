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


def epoch_at(fraction: float, max_epochs: int) -> int:
    """The epoch ``round(fraction · max_epochs)``: a point of the run that scales with its length."""
    return round(fraction * max_epochs)


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
    """From epoch ``epoch`` on (0-based), train on the detection loss only; or, with
    ``fraction``, from epoch ``round(fraction · max_epochs)`` on, so the same YAML stops at
    the same point of a 50- or a 100-epoch run ("early-stopped" distillation: the teacher
    shapes the first part of training, the labels alone the rest)."""

    def __init__(self, epoch: int | None = None, fraction: float | None = None) -> None:
        if (epoch is None) == (fraction is None):
            raise ValueError("StopDistillation: give exactly one of epoch (>= 0), fraction (in (0, 1])")
        if epoch is not None and epoch < 0:
            raise ValueError(f"StopDistillation: epoch must be >= 0, got {epoch}")
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"StopDistillation: fraction must be in (0, 1], got {fraction}")
        self.epoch, self.fraction = epoch, fraction

    def stop_epoch(self, max_epochs: int) -> int:
        """The first epoch without distillation in a run of ``max_epochs``."""
        return self.epoch if self.epoch is not None else epoch_at(self.fraction, max_epochs)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        stop = self.stop_epoch(trainer.max_epochs)
        _set(pl_module, "stop", 0.0 if trainer.current_epoch >= stop else 1.0)


class DistillationDecay(Callback):
    """Linear decay of all distillation weights to zero: factor ``max(0, 1 − e / E)`` at
    epoch ``e``, with ``E = round(fraction · max_epochs)`` (``fraction`` 1: over the whole
    run). The gradual form of :class:`StopDistillation`: the teacher's pull is strongest
    while the student is far from the labels and fades as it fits them, instead of ending
    at one epoch ("annealed" distillation). Measured in docs/results.md ("A decaying
    weight"): an option, not the default."""

    def __init__(self, fraction: float = 1.0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"DistillationDecay: fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def factor(self, epoch: int, max_epochs: int) -> float:
        """The factor at (0-based) ``epoch`` of a run of ``max_epochs``."""
        end = max(1, epoch_at(self.fraction, max_epochs))
        return max(0.0, 1.0 - epoch / end)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        _set(pl_module, "decay", self.factor(trainer.current_epoch, trainer.max_epochs))
