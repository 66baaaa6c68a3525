"""Evaluation metrics (DESIGN.md §5): per-frame mAP, Charades localisation mAP, event-level mAP."""

from .charades import CharadesMAP, charades_frames, write_charades_submission
from .event_map import EVENT_THRESHOLDS, EventMAP, EventThresholdSearch, choose_threshold, event_map, extract_segments
from .frame_map import FrameMAP

__all__ = [
    "FrameMAP",
    "CharadesMAP",
    "charades_frames",
    "write_charades_submission",
    "EventMAP",
    "EventThresholdSearch",
    "EVENT_THRESHOLDS",
    "choose_threshold",
    "event_map",
    "extract_segments",
]
