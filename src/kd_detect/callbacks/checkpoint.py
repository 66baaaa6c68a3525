"""Checkpoints in the run directory, written atomically.

``RunCheckpoint`` writes ``<run dir>/best.ckpt`` (best ``val/frame_map``) and
``<run dir>/last.ckpt``, where the run directory is the trainer's ``default_root_dir``
(``runs/<EXP>/`` under ``make train``). ``AtomicCheckpointIO`` writes every checkpoint to
a temporary file in the same directory and renames it into place, so a run killed
mid-write leaves the previous valid checkpoint, never a truncated one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from kd_detect.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through :func:`kd_detect.io.atomic_write` (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)


class RunCheckpoint(ModelCheckpoint):
    """``best.ckpt`` by ``val/frame_map`` (max) and ``last.ckpt`` in the run directory."""

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/frame_map",
        mode: str = "max",
        filename: str = "best",
        save_last: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            monitor=monitor,
            mode=mode,
            filename=filename,
            save_last=save_last,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
            **kwargs,
        )

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(trainer.default_root_dir)
        super().setup(trainer, pl_module, stage)

    def _save_last_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_saved_step = trainer.global_step

    # Lightning >= 2.5 refreshes last.ckpt only in epochs where best.ckpt improved; a resume
    # must continue from the latest epoch, so write it every time Lightning considers saving.
    def _ensure_last(self, trainer: Any) -> None:
        if self.save_last and getattr(self, "_last_saved_step", None) != trainer.global_step:
            if not (trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit"):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)
