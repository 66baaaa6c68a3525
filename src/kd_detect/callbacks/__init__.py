"""Callbacks: what is about time or the run, not about the loss (DESIGN.md §2)."""

from kd_detect.callbacks.averaging import EMA
from kd_detect.callbacks.checkpoint import AtomicCheckpointIO, RunCheckpoint
from kd_detect.callbacks.report import LearningRateLogger, RunReport
from kd_detect.callbacks.rng import EpochSeed
from kd_detect.callbacks.schedule import DistillationDecay, DistillationWarmup, StopDistillation
from kd_detect.callbacks.teachers import TeacherMetrics

__all__ = [
    "AtomicCheckpointIO",
    "DistillationDecay",
    "DistillationWarmup",
    "EMA",
    "EpochSeed",
    "LearningRateLogger",
    "RunCheckpoint",
    "RunReport",
    "StopDistillation",
    "TeacherMetrics",
]
