"""Rebuild any detector from its checkpoint alone, and build modules from config dicts.

Modules created by :func:`instantiate` (and by the CLI) store their configuration in the
checkpoint in jsonargparse form, so ``load_detector(path)`` needs no YAML.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any, TypeVar

import torch

from kd_detect.errors import CheckpointError, find_user_error
from kd_detect.modules.detector import DetectorModule

__all__ = ["CheckpointError", "checkpoint_class", "file_sha256", "instantiate", "load_detector", "read_checkpoint"]

M = TypeVar("M", bound=DetectorModule)

INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"


def instantiate(class_path: str | type, **init_args: Any) -> DetectorModule:
    """Build a module from a config dict the way the CLI does (jsonargparse parses the
    nested ``class_path``/``init_args`` values), recording the config as hyperparameters
    so the checkpoint can be reloaded without the YAML."""
    from pytorch_lightning.cli import instantiate_module
    from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters_context

    cls = _resolve(class_path) if isinstance(class_path, str) else class_path
    config = {"_class_path": f"{cls.__module__}.{cls.__qualname__}", **init_args}
    with _given_hyperparameters_context(hparams=config, instantiator=INSTANTIATOR):
        try:
            return instantiate_module(DetectorModule, config)
        except Exception as err:
            ours = find_user_error(err)
            if ours is not None:  # unwrap jsonargparse's "does not validate" wrapper
                raise ours from None
            raise


def _resolve(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable PyTorch Lightning checkpoint ({type(err).__name__}: {err})") from err


def checkpoint_class(ckpt: dict[str, Any], path: str | Path) -> type:
    hparams = ckpt.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path")
    if not class_path:
        raise CheckpointError(f"{path}: checkpoint does not record its module class (not written by kd_detect?)")
    try:
        return _resolve(class_path)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{path}: module class {class_path!r} cannot be imported ({err})") from err


def load_detector(path: str | Path, expect: type[M] = DetectorModule, **overrides: Any) -> M:
    """Load a kd_detect checkpoint as the module class it was saved from, in eval mode.

    ``expect`` names the kind required (e.g. ``TeacherModule``'s base ``DetectorModule``
    for a teacher, ``StudentModule`` for export); anything else is refused with a clear
    error naming the file and both kinds.
    """
    ckpt = read_checkpoint(path)
    cls = checkpoint_class(ckpt, path)
    if not issubclass(cls, expect):
        raise CheckpointError(f"{path}: is a {cls.__name__} checkpoint, expected a {expect.__name__}")
    try:
        module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=False, **overrides)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: could not rebuild {cls.__name__} ({type(err).__name__}: {err})") from err
    return module.eval()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
