"""End-of-run reporting: ``metrics.json``, the Charades submission file and a summary.

After testing, rank 0 writes ``<run dir>/metrics.json`` (atomically) with every logged
``test/...`` figure under its logged name, the best epoch and the parameter counts, and
prints a concise summary. When the test set was scored with the Charades protocol, the
official submission file (``id frameno score_0 … score_{C-1}``) goes to
``<run dir>/charades_submission.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from kd_detect.io import atomic_write


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _float(value: Any) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


class RunReport(Callback):
    """Writes ``metrics.json`` (+ submission file) after test and prints the summary."""

    def __init__(self, run_dir: str | None = None, submission: bool = True, quiet: bool = False) -> None:
        self.run_dir = run_dir
        self.submission = submission
        self.quiet = quiet

    def _dir(self, trainer: Any) -> Path:
        return Path(self.run_dir or trainer.default_root_dir)

    @rank_zero_only
    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        run_dir = self._dir(trainer)
        metrics = {k: _float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        counts = pl_module.parameter_counts() if hasattr(pl_module, "parameter_counts") else {}
        teachers = getattr(pl_module, "teachers", {}) or {}
        payload: dict[str, Any] = dict(metrics)
        payload["params"] = counts
        if teachers:
            payload["teacher_params_frozen"] = {
                name: sum(p.numel() for p in t.parameters()) for name, t in teachers.items()
            }
        ckpt_path = trainer.ckpt_path
        if ckpt_path and Path(ckpt_path).is_file():
            payload["checkpoint"] = str(ckpt_path)
            try:
                payload["best_epoch"] = int(torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"])
            except Exception:  # noqa: BLE001 - the summary is best effort, the metrics are not
                pass
        cb = getattr(trainer, "checkpoint_callback", None)  # what the tested checkpoint was chosen on
        score = getattr(cb, "best_model_score", None)
        if score is not None and getattr(cb, "monitor", None):
            payload["selection"] = {"monitor": cb.monitor, "mode": cb.mode, "score": _float(score)}
        write_json_atomic(run_dir / "metrics.json", payload)
        # gathered over ranks by the module's on_test_epoch_end; written by rank 0 only
        frames = getattr(pl_module, "charades_frames", None)
        if self.submission and frames and len(frames[0]):
            from kd_detect.metrics import write_charades_submission

            ids, scores = frames
            write_charades_submission(run_dir / "charades_submission.txt", ids, scores)
        if not self.quiet:
            self.print_summary(run_dir, payload)

    @staticmethod
    def print_summary(run_dir: Path, payload: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"kd_detect results — {run_dir}", show_header=True)
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key in sorted(k for k in payload if k.startswith("test/")):
            table.add_row(key, f"{payload[key]:.4f}")
        params = payload.get("params", {})
        if params:
            table.add_row("params trainable", f"{params.get('trainable', 0):,}")
            table.add_row("params frozen", f"{params.get('frozen', 0):,}")
        for name, n in payload.get("teacher_params_frozen", {}).items():
            table.add_row(f"teacher {name} params (frozen, not saved)", f"{n:,}")
        if "best_epoch" in payload:
            table.add_row("best epoch", str(payload["best_epoch"]))
        Console().print(table)


class LearningRateLogger(LearningRateMonitor):
    """Lightning's LearningRateMonitor that stays silent (instead of raising) when the
    run has no logger, e.g. ``--trainer.logger=false``."""

    def on_train_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self._silent = not trainer.loggers
        if not self._silent:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if not getattr(self, "_silent", False):
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if not getattr(self, "_silent", False):
            super().on_train_epoch_start(trainer, *args, **kwargs)
