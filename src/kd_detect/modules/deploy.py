"""The deployable RGB-only detector behind ``kd-detect export`` (DESIGN.md §7).

``kd-detect export`` (:mod:`kd_detect.apps.export`) writes two files:

* ``student.pt`` -- a TorchScript module (``torch.jit.script``; no kd_detect, Lightning or
  teacher needed to run it)::

      model = torch.jit.load("student.pt")
      probs = model(rgb)            # rgb float32 (B, D, T) -> per-step probabilities (B, C, T)
      probs = model(rgb, mask)      # mask bool (B, T), True on valid steps; padded steps give 0
      model.classes, model.in_dim   # List[str] class names, D
      model.event_threshold         # segment extraction cut chosen on validation (NaN: none)

* ``student.state.pt`` -- a plain ``torch.save`` dict: the bare detector's ``state_dict``
  plus what rebuilds it (head ``class_path`` + ``init_args``, ``in_dim``, ``num_classes``,
  ``classes``, ``event_threshold``); :func:`load_state` turns it back into the same module.

What can be exported: the bare RGB detector of a :class:`~kd_detect.modules.StudentModule`
(no teacher, no distillation projection heads), an RGB-only
:class:`~kd_detect.modules.DetectorModule` (the baseline), and a
:class:`~kd_detect.modules.TeacherModule` **only if its modalities are exactly
``["rgb"]``** (any fusion) -- a multi-modal teacher cannot run on RGB alone, so it is
refused with one clear line. Models whose rgb encoder is not the identity (a subclass's
``build_encoder``) are refused too: the state file could not rebuild them.

Before writing, the exported module is run next to the checkpoint's module on a padded
batch of random features; a difference above 1e-5 aborts the export.
"""

# No `from __future__ import annotations`: TorchScript reads DeployedDetector's annotations.
import functools
import importlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from kd_detect.errors import CheckpointError
from kd_detect.models.heads.base import DetectionHead
from kd_detect.models.inputs import Standardize

RGB = "rgb"
STATE_FORMAT = 1
TOLERANCE = 1e-5


class DeployedDetector(nn.Module):
    """``rgb (B, D, T)`` [, ``mask (B, T)`` bool] → probabilities ``(B, C, T)``, 0 on padding.

    ``embed`` is the optional pointwise 1×1 embedding a mid-fusion RGB-only teacher puts
    before its head; ``None`` for students and baselines. ``standardize`` is the model's
    input standardisation (``kd_detect.models.inputs.Standardize``, with the training
    statistics) when it was trained with ``standardize: true``. ``event_threshold`` is the
    segment extraction threshold chosen on validation (``event_threshold: auto``), NaN when
    the model has none.
    """

    classes: List[str]
    in_dim: int
    num_classes: int
    event_threshold: float

    def __init__(
        self, head: nn.Module, classes: List[str], in_dim: int, embed: Optional[nn.Module] = None,
        standardize: Optional[nn.Module] = None, event_threshold: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.event_threshold = float("nan") if event_threshold is None else float(event_threshold)
        self.embed = embed if embed is not None else nn.Identity()
        self.standardize = standardize if standardize is not None else nn.Identity()
        self.head = head
        self.classes = [str(c) for c in classes]
        self.in_dim = int(in_dim)
        self.num_classes = len(self.classes)

    def forward(self, rgb: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if rgb.dim() != 3 or rgb.shape[1] != self.in_dim:
            raise ValueError(f"rgb must have shape (B, {self.in_dim}, T), got {list(rgb.shape)}")
        if mask is None:
            mask = torch.ones(rgb.shape[0], rgb.shape[2], dtype=torch.bool, device=rgb.device)
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != rgb.shape[0] or mask.shape[1] != rgb.shape[2]:
            raise ValueError(f"mask must be bool (B, T) = {[rgb.shape[0], rgb.shape[2]]}, got {list(mask.shape)}")
        x = rgb.float().masked_fill(~mask.unsqueeze(1), 0.0)
        m = mask.unsqueeze(1).to(x.dtype)
        out = self.head(self.embed(self.standardize(x)) * m, mask)  # both pointwise: masking stays exact
        return torch.sigmoid(out.logits) * m


# ---------------------------------------------------------------------------- from a checkpoint
def _head_config(head: Any, path: Path) -> Dict[str, Any]:
    """``{"class_path", "init_args"}`` of a module's ``head`` hyperparameter: the config dict
    a checkpoint stores, or the ``functools.partial`` jsonargparse instantiated from it."""
    if head is None:  # DetectorModule's default: PDAN with the authors' defaults
        return {"class_path": "kd_detect.models.heads.PDAN", "init_args": {}}
    if isinstance(head, dict) and "class_path" in head:
        return {"class_path": str(head["class_path"]), "init_args": dict(head.get("init_args") or {})}
    if isinstance(head, functools.partial):
        classes = [a for a in head.args if isinstance(a, type) and issubclass(a, DetectionHead)]
        if isinstance(head.func, type) and issubclass(head.func, DetectionHead):
            classes.append(head.func)
        if len(classes) == 1:
            return {"class_path": f"{classes[0].__module__}.{classes[0].__qualname__}", "init_args": dict(head.keywords)}
    raise CheckpointError(f"{path}: the head config is not recorded as class_path/init_args, cannot export it")


def deployable(module: Any, path: str | os.PathLike, head_config: Any = None) -> tuple[DeployedDetector, Dict[str, Any]]:
    """The RGB-only detector inside ``module`` (eval mode) and the config that rebuilds it.
    ``head_config``: the checkpoint's ``hyper_parameters["head"]`` (default: the module's).

    Raises :class:`~kd_detect.modules.CheckpointError` (naming ``path``) for a module that
    cannot run on RGB alone.
    """
    from kd_detect.modules.student import StudentModule
    from kd_detect.modules.teacher import TeacherModule

    path = Path(path)
    kind = type(module).__name__
    if list(module.modalities) != [RGB]:
        raise CheckpointError(
            f"{path}: is a {kind} checkpoint on modalities {list(module.modalities)}; export writes an RGB-only "
            f"model, so it needs a StudentModule (or a DetectorModule/TeacherModule on exactly ['rgb'])"
        )
    encoder = module.encoders[RGB]
    if not isinstance(encoder, nn.Identity):
        raise CheckpointError(
            f"{path}: the rgb encoder of this {kind} is a custom {type(encoder).__name__} (build_encoder); "
            "export supports identity rgb encoders only"
        )
    embed: Optional[nn.Module] = None
    embed_cfg: Optional[Dict[str, int]] = None
    fusion = getattr(module, "fusion", "early") if isinstance(module, TeacherModule) else "early"
    if fusion == "late":
        head = module.heads[RGB]
    elif fusion == "mid":
        head, embed = module.head, module.embeddings[RGB]
        embed_cfg = {"in_dim": int(embed.in_channels), "out_dim": int(embed.out_channels)}
    else:
        head = module.head
    in_dim = int(module.modality_dims[RGB])
    standardize = module.standardizers[RGB] if getattr(module, "standardize", False) else None
    chosen = getattr(module, "event_threshold_chosen", None)
    deployed = DeployedDetector(head, list(module.classes), in_dim, embed, standardize, chosen).eval()
    config = {
        "kd_detect_export": STATE_FORMAT,
        "modality": RGB,
        "head": _head_config(module.hparams.get("head") if head_config is None else head_config, path),
        "embed": embed_cfg,
        "standardize": standardize is not None,
        "in_dim": in_dim,
        "num_classes": int(module.num_classes),
        "classes": list(deployed.classes),
        "event_threshold": chosen,
        "source_checkpoint": str(path),
        "source_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "student": isinstance(module, StudentModule),
    }
    return deployed, config


def build_from_config(config: Dict[str, Any]) -> DeployedDetector:
    """A fresh (untrained) :class:`DeployedDetector` from a state file's config."""
    head_cfg = config["head"]
    module_name, _, cls_name = str(head_cfg["class_path"]).rpartition(".")
    head_cls = getattr(importlib.import_module(module_name), cls_name)
    embed_cfg = config.get("embed")
    head_in = int(embed_cfg["out_dim"]) if embed_cfg else int(config["in_dim"])
    head = head_cls(head_in, int(config["num_classes"]), **dict(head_cfg.get("init_args") or {}))
    embed = nn.Conv1d(int(embed_cfg["in_dim"]), int(embed_cfg["out_dim"]), 1) if embed_cfg else None
    standardize = Standardize(int(config["in_dim"])) if config.get("standardize") else None
    return DeployedDetector(head, list(config["classes"]), int(config["in_dim"]), embed, standardize,
                            config.get("event_threshold"))


def load_state(path: str | os.PathLike) -> DeployedDetector:
    """Rebuild the exported detector from ``<name>.state.pt`` (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: state file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # plain data: no pickled code
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a state file"
        raise CheckpointError(f"{path}: not a readable kd_detect state file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("kd_detect_export") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a kd_detect export state file (key 'kd_detect_export'={STATE_FORMAT} missing)")
    model = build_from_config(payload)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def state_path(out: str | os.PathLike) -> Path:
    """``student.pt`` → ``student.state.pt`` (next to the TorchScript file)."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.state.pt")


def check_same_outputs(module: Any, exported: nn.Module, where: str, in_dim: int) -> float:
    """Max |difference| of probabilities of ``exported(rgb, mask)`` and the Lightning module on a
    random padded batch (lengths 9, 4, 1); raises if above :data:`TOLERANCE`."""
    g = torch.Generator().manual_seed(0)
    lengths = (9, 4, 1)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    rgb = torch.randn(len(lengths), in_dim, max(lengths), generator=g) * mask.unsqueeze(1)
    with torch.no_grad():
        expected = torch.sigmoid(module({RGB: rgb, "mask": mask}).logits.float()) * mask.unsqueeze(1)
        got = exported(rgb, mask)
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        raise CheckpointError(f"{where}: the exported model differs from the checkpoint's by {diff:.3g} (> {TOLERANCE})")
    return diff
