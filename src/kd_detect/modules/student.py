"""StudentModule: the RGB-only detector trained with distillation (DESIGN.md §2–§3).

``L = L_BCE + scale · Σ_teacher Σ_plugin weight_k · L_k(student, teacher)``

* Teachers are given by checkpoint path (``teachers: {name: path}``), loaded once, kept in
  eval mode with ``requires_grad=False`` and run under ``inference_mode`` (under autocast in
  the trainer's reduced dtype when it trains with mixed precision; outputs handed over in
  float32). They are **not**
  submodules: Lightning never flips them to train mode, DDP never sees them (no
  ``find_unused_parameters``), and the student's checkpoint holds none of their weights.
* Or teacher outputs come from caches written by ``kd-detect cache-teacher``
  (``teacher_caches: {name: path}``), refused when stale; both paths give the same losses.
* ``distill`` maps a name to a :class:`~kd_detect.distill.base.DistillationLoss`; each
  teacher gets its own copy of every plugin (its projection heads see that teacher's
  feature dim), so a flow teacher and a pose teacher distil side by side, losses summed.
* ``distill_scale`` (1.0) multiplies every distillation term; it is the product of the
  factors the schedule callbacks (warm-up, stop-at-epoch) set in ``distill_factors``. Plugins with weight 0, or scale 0, cost nothing --
  not even the teacher forward.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import Tensor, nn

from kd_detect.data.batch import MASK, META
from kd_detect.distill.base import DistillationLoss
from kd_detect.models.heads.base import HeadOutput
from kd_detect.modules.detector import DetectorModule
from kd_detect.modules.loading import file_sha256, load_detector


def reduced_precision(precision: str | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``precision`` setting for the frozen teacher's
    forward: ``bfloat16`` for ``"bf16-mixed"``, ``float16`` for ``"16-mixed"``, ``None``
    (full precision) otherwise -- a true-bf16/fp16 or fp32 trainer runs the teacher as is."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


class TeacherCompatibilityError(ValueError):
    """A teacher (checkpoint or cache) does not fit the student or the data."""


class StudentModule(DetectorModule):
    """RGB-only detector distilled from one or more frozen teachers. Args as
    :class:`DetectorModule`, plus:

    Args:
        teachers: ``{name: checkpoint path}`` of frozen teachers run live.
        teacher_caches: ``{name: cache path}`` read instead of running that teacher; when
            the same name is in ``teachers`` too, the cache must have been written from
            that checkpoint (sha256 compared) or it is refused as stale.
        distill: ``{name: plugin}`` -- e.g. ``atomic``, ``global``, ``boundary``.
        teacher_dims: filled in automatically (teacher feature dims) so the student can
            be rebuilt from its checkpoint without the teachers (export, inference).
    """

    def __init__(
        self,
        teachers: dict[str, str] | None = None,
        teacher_caches: dict[str, str] | None = None,
        distill: dict[str, DistillationLoss] | None = None,
        teacher_dims: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: every :class:`DetectorModule` argument (head, modalities, lr, ...)."""
        super().__init__(**kwargs)
        self.distill_factors: dict[str, float] = {}
        teachers, teacher_caches = dict(teachers or {}), dict(teacher_caches or {})
        # Frozen teachers live outside the module tree (see module docstring).
        object.__setattr__(self, "_teachers", {})
        object.__setattr__(self, "_caches", {})
        dims = dict(teacher_dims or {})
        for name, path in teacher_caches.items():
            # With the checkpoint named too, the cache must have been written by it.
            expected = file_sha256(teachers[name]) if name in teachers else None
            cache = self._open_cache(name, path, expected)
            self._caches[name] = cache
            dims[name] = cache.feature_dim
        for name, path in teachers.items():
            if name in self._caches:
                continue
            teacher = self._load_teacher(name, path)
            self._teachers[name] = teacher
            dims[name] = teacher.feature_dim
        self.teacher_dims = dims
        self.hparams["teacher_dims"] = dims
        plugins = dict(distill or {})
        self.distill = nn.ModuleDict()
        for tname, tdim in dims.items():
            per_teacher = nn.ModuleDict()
            for pname, plugin in plugins.items():
                if not isinstance(plugin, DistillationLoss):
                    raise TypeError(f"distill[{pname!r}] must be a DistillationLoss, got {type(plugin).__name__}")
                p = copy.deepcopy(plugin)
                p.setup(self.feature_dim, tdim, self.num_classes)
                per_teacher[pname] = p
            self.distill[tname] = per_teacher

    @property
    def distill_scale(self) -> float:
        """Product of the schedule factors (1.0 without schedules)."""
        scale = 1.0
        for factor in self.distill_factors.values():
            scale *= factor
        return scale

    # -------------------------------------------------------------- teachers
    def _load_teacher(self, name: str, path: str) -> DetectorModule:
        teacher = load_detector(path)
        if list(teacher.classes) != list(self.classes):
            raise TeacherCompatibilityError(
                f"teacher {name!r} ({path}) was trained on {teacher.num_classes} classes "
                f"{teacher.classes[:3]}…, the data has {self.num_classes} {self.classes[:3]}…"
            )
        teacher.eval()
        teacher.requires_grad_(False)
        teacher.sha256 = file_sha256(path)
        return teacher

    def _open_cache(self, name: str, path: str, expected_sha256: str | None) -> Any:
        from kd_detect.data.teacher_cache import TeacherCache

        cache = TeacherCache(path, expected_sha256=expected_sha256)
        if list(cache.classes) != list(self.classes):
            raise TeacherCompatibilityError(
                f"teacher cache {name!r} ({path}) has classes {cache.classes[:3]}… ({cache.num_classes}), "
                f"the data has {self.classes[:3]}… ({self.num_classes})"
            )
        return cache

    @property
    def teachers(self) -> dict[str, DetectorModule]:
        return dict(self._teachers)

    def check_data(self, modality_dims: dict[str, int]) -> None:
        """Every live teacher's modalities must exist in the data, with matching dims."""
        for name, teacher in self._teachers.items():
            for m, dim in teacher.modality_dims.items():
                if m not in modality_dims:
                    raise TeacherCompatibilityError(
                        f"teacher {name!r} needs modality {m!r}, the DataModule loads {sorted(modality_dims)} "
                        f"(set data.modalities, or use a teacher cache)"
                    )
                if modality_dims[m] != dim:
                    raise TeacherCompatibilityError(
                        f"teacher {name!r} was trained on {m!r} features of dim {dim}, the data has {modality_dims[m]}"
                    )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and stage in ("fit", "validate") and self._teachers:
            self.check_data(dm.modality_dims)

    def on_fit_start(self) -> None:
        """Log each teacher's own test figures once, for reference (from the
        ``metrics.json`` that ``make train`` wrote next to its checkpoint)."""
        import json
        from pathlib import Path

        paths = dict(self.hparams.get("teachers") or {})
        figures = {}
        for name, path in paths.items():
            metrics = Path(path).with_name("metrics.json")
            if metrics.is_file():
                data = json.loads(metrics.read_text())
                for key in ("test/frame_map", "test/charades_map"):
                    if key in data:
                        figures[f"teacher/{name}/{key.split('/', 1)[1]}"] = float(data[key])
        if figures and self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics(figures, step=0)

    def teacher_outputs(self, name: str, batch: dict[str, Any]) -> HeadOutput:
        """One teacher's outputs for this batch, with no autograd graph."""
        if name in self._caches:
            return self._caches[name].batch(batch[META], batch[MASK])
        teacher = self._teachers[name]
        if teacher.device != self.device:
            teacher.to(self.device)
        if teacher.training:  # nobody may flip it back; be loud if someone did
            teacher.eval()
        dtype = reduced_precision(self._trainer.precision if self._trainer is not None else None)
        # without a mixed-precision trainer, inherit the caller's autocast state (if any)
        cast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            out = teacher(batch)
        # Inference tensors cannot be saved for the plugins' backward: hand over float32
        # copies (also what the cache path gives, so plugins see one dtype either way).
        return HeadOutput(out.features.float().clone(), out.logits.float().clone())

    def active_plugins(self) -> dict[str, dict[str, DistillationLoss]]:
        if self.distill_scale == 0.0:
            return {}
        active = {}
        for tname, plugins in self.distill.items():
            chosen = {p: m for p, m in plugins.items() if m.weight != 0.0}
            if chosen:
                active[tname] = chosen
        return active

    def distillation_losses(self, student: HeadOutput, batch: dict[str, Any]) -> dict[tuple[str, str], Tensor]:
        """Unweighted loss of every active (teacher, plugin) pair."""
        active = self.active_plugins()
        missing = [t for t in active if t not in self._teachers and t not in self._caches]
        if missing:
            raise TeacherCompatibilityError(
                f"no teacher loaded for {missing}: give `teachers` (checkpoints) or `teacher_caches` to train"
            )
        losses = {}
        for tname, plugins in active.items():
            teacher_out = self.teacher_outputs(tname, batch)
            for pname, plugin in plugins.items():
                losses[(tname, pname)] = plugin(student, teacher_out, batch[MASK])
        return losses

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self(batch)
        bsz = batch[MASK].shape[0]
        bce = self.detection_loss(out, batch)
        total = bce
        self.log("train/bce", bce, batch_size=bsz)
        single = len(self.distill) == 1
        for (tname, pname), value in self.distillation_losses(out, batch).items():
            weighted = self.distill_scale * self.distill[tname][pname].weight * value
            total = total + weighted
            key = pname if single else f"{tname}/{pname}"
            self.log(f"train/distill/{key}", value, batch_size=bsz)
            self.log(f"train/distill_weighted/{key}", weighted, batch_size=bsz)
        self.log("train/loss", total, prog_bar=True, batch_size=bsz)
        return total

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Belt and braces: teachers are not submodules, so nothing of theirs is in the
        # state dict; make sure of it.
        state = checkpoint.get("state_dict", {})
        leaked = [k for k in state if k.startswith("_teachers")]
        for k in leaked:
            del state[k]

    def student_state_dict(self) -> dict[str, Tensor]:
        """The bare detector's weights (encoders + head; no plugin heads, no teacher)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("distill.")}
