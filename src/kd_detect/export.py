"""RGB-only deployment: ``kd-detect export --ckpt student.ckpt --out student.pt`` (DESIGN.md §7).

Writes two files:

* ``student.pt`` -- a TorchScript module (``torch.jit.script``; no kd_detect, Lightning or
  teacher needed to run it)::

      model = torch.jit.load("student.pt")
      probs = model(rgb)            # rgb float32 (B, D, T) -> per-step probabilities (B, C, T)
      probs = model(rgb, mask)      # mask bool (B, T), True on valid steps; padded steps give 0
      model.classes, model.in_dim   # List[str] class names, D

* ``student.state.pt`` -- a plain ``torch.save`` dict: the bare detector's ``state_dict``
  plus what rebuilds it (head ``class_path`` + ``init_args``, ``in_dim``, ``num_classes``,
  ``classes``); :func:`load_state` turns it back into the same module.

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
import argparse
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

RGB = "rgb"
STATE_FORMAT = 1
TOLERANCE = 1e-5


class DeployedDetector(nn.Module):
    """``rgb (B, D, T)`` [, ``mask (B, T)`` bool] → probabilities ``(B, C, T)``, 0 on padding.

    ``embed`` is the optional pointwise 1×1 embedding a mid-fusion RGB-only teacher puts
    before its head; ``None`` for students and baselines.
    """

    classes: List[str]
    in_dim: int
    num_classes: int

    def __init__(self, head: nn.Module, classes: List[str], in_dim: int, embed: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.embed = embed if embed is not None else nn.Identity()
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
        out = self.head(self.embed(x) * m, mask)
        return torch.sigmoid(out.logits) * m


# ---------------------------------------------------------------------------- from a checkpoint
def _head_config(head: Any, path: Path) -> Dict[str, Any]:
    """``{"class_path", "init_args"}`` of a module's ``head`` hyperparameter: the config dict
    a checkpoint stores, or the ``functools.partial`` jsonargparse instantiated from it."""
    import functools

    from kd_detect.models.heads.base import DetectionHead
    from kd_detect.modules.loading import CheckpointError

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
    from kd_detect.modules import StudentModule, TeacherModule
    from kd_detect.modules.loading import CheckpointError

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
    deployed = DeployedDetector(head, list(module.classes), in_dim, embed).eval()
    config = {
        "kd_detect_export": STATE_FORMAT,
        "modality": RGB,
        "head": _head_config(module.hparams.get("head") if head_config is None else head_config, path),
        "embed": embed_cfg,
        "in_dim": in_dim,
        "num_classes": int(module.num_classes),
        "classes": list(deployed.classes),
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
    return DeployedDetector(head, list(config["classes"]), int(config["in_dim"]), embed)


def load_state(path: str | os.PathLike) -> DeployedDetector:
    """Rebuild the exported detector from ``<name>.state.pt`` (eval mode)."""
    from kd_detect.tools import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: state file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # plain data: no pickled code
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a state file"
        raise UsageError(f"{path}: not a readable kd_detect state file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("kd_detect_export") != STATE_FORMAT:
        raise UsageError(f"{path}: not a kd_detect export state file (key 'kd_detect_export'={STATE_FORMAT} missing)")
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
    from kd_detect.modules.loading import CheckpointError

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


def _atomic_write(path: Path, write: Any) -> None:
    from kd_detect.tools import UsageError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UsageError(f"{path}: cannot write here ({err.strerror or err})") from err
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export(ckpt: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path]:
    """Export the RGB-only detector of checkpoint ``ckpt`` to ``out`` (TorchScript) and
    :func:`state_path` (``out``) (plain state dict + config). Returns both paths."""
    from kd_detect.modules import StudentModule
    from kd_detect.modules.loading import CheckpointError, checkpoint_class, load_detector, read_checkpoint

    ckpt, out = Path(ckpt), Path(out)
    raw = read_checkpoint(ckpt)
    cls = checkpoint_class(raw, ckpt)
    head_config = (raw.get("hyper_parameters") or {}).get("head")
    del raw
    # a student's teachers are not needed (nor loaded) to export it
    overrides = {"teachers": {}, "teacher_caches": {}} if issubclass(cls, StudentModule) else {}
    module = load_detector(ckpt, **overrides)
    deployed, config = deployable(module, ckpt, head_config)
    try:
        scripted = torch.jit.script(deployed)
    except Exception as err:  # noqa: BLE001 - a head TorchScript cannot compile
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{ckpt}: head {config['head']['class_path']} cannot be compiled by torch.jit.script ({first})"
        ) from err
    check_same_outputs(module, scripted, str(ckpt), config["in_dim"])
    state = {**config, "state_dict": {k: v.detach().cpu().clone() for k, v in deployed.state_dict().items()}}
    rebuilt = build_from_config(config)
    rebuilt.load_state_dict(state["state_dict"])
    check_same_outputs(module, rebuilt.eval(), f"{ckpt} (state file)", config["in_dim"])
    _atomic_write(out, lambda tmp: torch.jit.save(scripted, tmp))
    state_file = state_path(out)
    _atomic_write(state_file, lambda tmp: torch.save(state, tmp))
    return out, state_file


def main(argv: List[str]) -> int:
    """``kd-detect export --ckpt CKPT --out student.pt``."""
    from kd_detect.tools import user_errors

    parser = argparse.ArgumentParser(
        prog="kd-detect export",
        description="Export the RGB-only detector of a kd_detect checkpoint (a StudentModule without its "
        "teachers and projection heads, or an RGB-only DetectorModule/TeacherModule) as TorchScript "
        "(model(rgb[, mask]) -> probabilities (B, C, T); model.classes, model.in_dim) plus a plain "
        "<name>.state.pt (state dict + rebuild config).",
    )
    parser.add_argument("--ckpt", required=True, help="kd_detect checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="TorchScript file to write, e.g. student.pt")
    args = parser.parse_args(argv)
    with user_errors(parser.prog, also=()):
        script_file, state_file = export(args.ckpt, args.out)
        model = torch.jit.load(str(script_file))
        print(f"wrote {script_file} (TorchScript: rgb (B, {model.in_dim}, T) -> probabilities "
              f"(B, {len(model.classes)}, T)) and {state_file}")
    return 0
