"""Data layer: HDF5 format v1, validation, dataset and DataModule (DESIGN.md §2, §4).

``FeatureData``, ``FeatureDataModule`` (and the dataset/samplers) are imported lazily so that
``kd-detect check`` and the converters do not pay for importing Lightning.
"""

from __future__ import annotations

from typing import Any

from .format import (
    FORMAT_VERSION,
    FeatureFile,
    FeatureFileError,
    FeatureFileWriter,
    VideoRecord,
    labels_from_segments,
    step_times,
    write_feature_file,
)
from .validate import ValidationReport, validate_file

_LAZY = {
    "FeatureData": "feature_data",
    "FeatureDataModule": "datamodule",
    "FeatureDataset": "dataset",
    "UnrepeatedDistributedSampler": "dataset",
    "EpochDistributedSampler": "dataset",
    "collate_videos": "dataset",
}

__all__ = [
    "FORMAT_VERSION",
    "FeatureFile",
    "FeatureFileError",
    "FeatureFileWriter",
    "VideoRecord",
    "labels_from_segments",
    "step_times",
    "write_feature_file",
    "ValidationReport",
    "validate_file",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
