"""Temporal detection heads: ``(B, D, T), mask (B, T) -> HeadOutput`` (DESIGN.md §2)."""

from .base import DetectionHead, HeadOutput
from .decomposed import Decomposed
from .mstcn import MSTCN
from .pdan import PDAN
from .tcn import TCN

__all__ = ["PDAN", "Decomposed", "MSTCN", "TCN", "HeadOutput", "DetectionHead"]
