"""Pictures: :mod:`~kd_detect.plots.figures` draws (arrays in, PNGs out),
:mod:`~kd_detect.plots.runs` picks the runs and models of ``kd-detect plot`` and scores them."""

from kd_detect.plots.figures import (
    active_classes,
    boundary_saliency,
    compare_bar_chart,
    log_to_wandb,
    plot_ap_gain,
    plot_knowledge,
    plot_timeline,
    relation_matrix,
)

__all__ = [
    "active_classes",
    "boundary_saliency",
    "compare_bar_chart",
    "log_to_wandb",
    "plot_ap_gain",
    "plot_knowledge",
    "plot_timeline",
    "relation_matrix",
]
