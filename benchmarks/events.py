"""The validation cost of ``event_threshold: auto``: event mAP at the one default cut vs the
search over the ten candidate cuts (``kd_detect.metrics.EventThresholdSearch``), on
TSU-like validation predictions (T 1,500-2,000 steps, 51 classes, ~30 ground-truth segments
a video), timed interleaved. The scores look like a detector's: a smooth background around
0.05 and bumps of 0.4-0.9 over most ground-truth segments, some bumps where there is none,
so every cut extracts a realistic number of segments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.common import TSU, DataShape, interleaved, median


def tsu_like_predictions(videos: int, shape: DataShape = TSU,
                         seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, float, np.ndarray]]:
    """``[(probs (1, C, T), mask (1, T), duration, segments (m, 3))]`` per video of ``shape``'s sizes."""
    rng = np.random.default_rng(seed)
    lo, hi = shape.steps
    out = []
    for _ in range(videos):
        T, C = int(rng.integers(lo, hi + 1)), shape.classes
        logits = np.convolve(rng.standard_normal(T * C + 24), np.ones(25) / 5, mode="valid")[: T * C]
        logits = logits.reshape(C, T) - 3.0
        segs = []
        for _ in range(shape.segments):
            c, start = int(rng.integers(C)), int(rng.integers(0, T - 10))
            end = min(T, start + int(rng.integers(10, 200)))
            segs.append((c, float(start), float(end)))
            if rng.random() < 0.8:  # most actions found, with a confidence of their own
                logits[c, start:end] += rng.uniform(2.5, 5.0)
        for _ in range(shape.segments // 3):  # and some false alarms
            c, start = int(rng.integers(C)), int(rng.integers(0, T - 10))
            logits[c, start:start + int(rng.integers(10, 100))] += rng.uniform(2.0, 4.0)
        probs = torch.sigmoid(torch.from_numpy(logits).float())[None]
        out.append((probs, torch.ones(1, T, dtype=torch.bool), float(T), np.array(segs)))
    return out


def bench_events(videos: int, repeats: int, shape: DataShape = TSU) -> dict[str, Any]:
    from kd_detect.metrics import EVENT_THRESHOLDS, EventMAP, EventThresholdSearch

    data = tsu_like_predictions(videos, shape)
    classes = shape.classes

    def epoch(make: Any) -> Any:
        def run() -> None:
            metric = make()
            for i, (probs, mask, duration, segs) in enumerate(data):
                metric.update(probs, mask, [duration], [segs], [f"v{i}"])
            metric.compute()
        return run

    times = interleaved({"one_cut": epoch(lambda: EventMAP(classes)),
                         "search": epoch(lambda: EventThresholdSearch(classes))}, repeats)
    one, search = median(times["one_cut"]), median(times["search"])
    counts = {}
    for t in EVENT_THRESHOLDS:
        metric = EventMAP(classes, threshold=t)
        for i, (probs, mask, duration, segs) in enumerate(data):
            metric.update(probs, mask, [duration], [segs], [f"v{i}"])
        counts[t] = int(sum(len(c) for c in metric.det_class)) / videos
    return {"videos": videos, "repeats": repeats, "cuts": list(EVENT_THRESHOLDS),
            "one_cut_ms_per_video": 1e3 * one / videos, "search_ms_per_video": 1e3 * search / videos,
            "search_over_one_cut": search / one, "segments_per_video": counts}
