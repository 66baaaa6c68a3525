"""Log each teacher's own test figures once at the start of a student's fit, for reference.

A teacher checkpoint ``runs/<T>/best.ckpt`` has its figures in ``runs/<T>/metrics.json``
(:class:`kd_detect.runs.RunDir`); ``test/frame_map`` and ``test/charades_map`` are logged as
``teacher/<name>/frame_map`` (...) at step 0, by rank 0, when the run has a logger.
The CLI adds this callback to every run; it does nothing for a model without teachers.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning import Callback

from kd_detect.runs import RunDir

KEYS = ("test/frame_map", "test/charades_map")


def teacher_figures(teachers: dict[str, str | list[str]]) -> dict[str, float]:
    """``{"teacher/<name>/<figure>": value}`` from the teachers' run directories; for a
    cross-fitted teacher (a list of fold checkpoints) one entry per fold teacher,
    ``teacher/<name>[<k>]/<figure>``."""
    figures = {}
    for name, spec in teachers.items():
        paths = {name: spec} if isinstance(spec, str) else {f"{name}[{k}]": p for k, p in enumerate(spec)}
        for label, path in paths.items():
            metrics = RunDir.of_checkpoint(path).metrics() or {}
            for key in KEYS:
                if key in metrics:
                    figures[f"teacher/{label}/{key.split('/', 1)[1]}"] = float(metrics[key])
    return figures


class TeacherMetrics(Callback):
    """See the module docstring."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        hparams = getattr(pl_module, "hparams", {}) or {}
        figures = teacher_figures(dict(hparams.get("teachers") or {}))
        if figures and trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(figures, step=0)
