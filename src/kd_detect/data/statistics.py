"""Per-dimension feature statistics of a set of videos, read in one streaming pass.

The detectors' optional input standardisation (``DetectorModule(standardize=True)``)
takes its mean and standard deviation from the training videos, as a linear probe does
(``kd_detect.lab.probe``). Every valid step of every video counts once:

    mu_d = (1/N) sum_t f_{t,d},        sigma_d = sqrt((1/N) sum_t f_{t,d}^2 - mu_d^2)

accumulated in float64 per video (so a long float16 file loses no precision), with
``sigma_d`` floored at ``eps`` so a constant dimension is left centred, not blown up.
Memory is one video at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kd_detect.data.format import FeatureFile


def feature_moments(
    feature_file: FeatureFile, video_ids: Sequence[str], modalities: Sequence[str], eps: float = 1e-6
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{modality: (mean, std)}``, each ``(D,)`` float64, over every step of ``video_ids``."""
    if not video_ids:
        raise ValueError(f"{feature_file.path}: feature statistics need at least one video")
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    count = 0
    for vid in video_ids:
        data = feature_file.read(vid, list(modalities))
        for m in modalities:
            x = np.asarray(data[m], dtype=np.float64)
            if m not in sums:
                sums[m], squares[m] = np.zeros(x.shape[1]), np.zeros(x.shape[1])
            sums[m] += x.sum(axis=0)
            squares[m] += np.einsum("td,td->d", x, x)
        count += len(data[modalities[0]])
    out = {}
    for m in modalities:
        mean = sums[m] / max(count, 1)
        var = np.maximum(squares[m] / max(count, 1) - mean**2, 0.0)
        out[m] = (mean, np.maximum(np.sqrt(var), eps))
    return out
