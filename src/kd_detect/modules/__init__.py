"""LightningModules: the common detector, the multi-modal teacher, the distilled student.

The names are resolved on first use (PEP 562), so that ``kd_detect.modules.inference``
can serve an exported model without importing Lightning; ``kd_detect.modules.StudentModule``
(YAML ``class_path``) works as before.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DetectorModule": "detector",
    "masked_bce": "detector",
    "CheckpointError": "loading",
    "instantiate": "loading",
    "load_detector": "loading",
    "StudentModule": "student",
    "TeacherCompatibilityError": "student",
    "TeacherModule": "teacher",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
