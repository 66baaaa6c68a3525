"""LightningModules: the common detector, the multi-modal teacher, the distilled student."""

from kd_detect.modules.detector import DetectorModule, masked_bce
from kd_detect.modules.loading import CheckpointError, instantiate, load_detector
from kd_detect.modules.student import StudentModule, TeacherCompatibilityError
from kd_detect.modules.teacher import TeacherModule

__all__ = [
    "CheckpointError",
    "DetectorModule",
    "StudentModule",
    "TeacherCompatibilityError",
    "TeacherModule",
    "instantiate",
    "load_detector",
    "masked_bce",
]
