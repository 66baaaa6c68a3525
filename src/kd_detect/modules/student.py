"""StudentModule: the RGB-only detector trained with distillation (DESIGN.md §2–§3).

``L = L_BCE + scale · Σ_teacher Σ_plugin weight_k · L_k(student, teacher)``

* Teachers are given by checkpoint path (``teachers: {name: path}``), loaded once, kept in
  eval mode with ``requires_grad=False`` and run under ``inference_mode`` (under autocast in
  the trainer's reduced dtype when it trains with mixed precision; outputs handed over in
  float32). They are **not**
  submodules: Lightning never flips them to train mode, DDP never sees them (no
  ``find_unused_parameters``), and the student's checkpoint holds none of their weights.
* A list of checkpoints under one name is a **cross-fitted teacher**
  (:mod:`kd_detect.modules.cross_fit`): fold teachers, each training video read by one that
  did not train on it; refused before training when a training video was seen by all.
* Or teacher outputs come from caches written by ``kd-detect cache-teacher``
  (``teacher_caches: {name: path}``), refused when stale; both paths give the same losses.
* ``distill`` maps a name to a :class:`~kd_detect.distill.base.DistillationLoss`; each
  teacher gets its own copy of every plugin (its projection heads see that teacher's
  feature dim), so a flow teacher and a pose teacher distil side by side, losses summed.
* ``distill_scale`` (1.0) multiplies every distillation term; it is the product of the
  factors the schedule callbacks (warm-up, stop-at-epoch) set in ``distill_factors``. Plugins with weight 0, or scale 0, cost nothing --
  not even the teacher forward.
* ``distill_from`` chooses the student outputs the plugins see. ``dropout`` (default, the
  paper's recipe): the training forward, with the head's dropout noise. ``clean``: a second
  forward of the same batch with every dropout module of the student switched off (still
  with gradients; nothing else changes: the head has no batch statistics), so the losses
  measure the student's mismatch with the dropout-free teacher, not its own dropout
  jitter. BCE still uses the dropout forward. Cost: one more student forward and backward
  per step (about 2× the head's compute; the teacher forward is unchanged). Dropout
  applied functionally (``F.dropout``) rather than by an ``nn.Dropout`` module is not
  switched off.
* ``init_from`` (a name in ``teachers``) starts the student's head from that teacher's
  trained head (:func:`start_from_teacher`; with late fusion, the head of the student's
  stream): every weight copied, and of the input layer only the columns that read the
  student's modalities. With the other modalities at their
  training mean (0 after standardisation) the student then computes exactly what the
  teacher computes. A checkpoint loaded afterwards (resume, predict, export) overrides it.
* **Unlabelled videos** (``data.unlabelled_subset``; ``kd_detect.data.batch``): the
  detection loss reads the labelled videos of a batch only, the distillation losses every
  video, so the teacher teaches the student on videos nobody annotated (the teacher sees
  their flow/pose at training time; the student, as always, their RGB only). Refused with
  a plugin that reads the labels (``needs_labels``, e.g. ``exclude_same_label``) and with
  mixup (it would mix labels with the zeros of unlabelled videos).
* ``weight: auto`` plugins (see :mod:`kd_detect.distill.base`) are balanced here: during
  the first ``auto_warmup`` steps the module measures ``‖∂L_BCE/∂S‖`` (at the dropout
  forward's features) and ``‖∂L_k/∂S‖`` (at the features the plugins see) with
  ``torch.autograd.grad``, averages them over DDP ranks and hands them to the plugin, which
  fixes ``λ_k = (auto_share / N_teachers) · mean‖∂L_BCE/∂S‖ / mean‖∂L_k/∂S‖``. The weights in use are
  logged as ``train/distill_weight/<name>``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any, Iterator, Literal

import torch
from torch import Tensor, nn

from kd_detect.data.batch import LABELS, MASK, META
from kd_detect.distill.base import DistillationLoss
from kd_detect.errors import TeacherCompatibilityError, UsageError
from kd_detect.models.heads.base import HeadOutput
from kd_detect.modules.detector import DetectorModule
from kd_detect.modules.loading import file_sha256, load_detector

DistillFrom = Literal["dropout", "clean"]


def teacher_sha256(path: str | list[str]) -> str:
    """The identity of a teacher: its checkpoint's sha256, or for a cross-fitted teacher
    (a list of checkpoints) the combined identity of the ordered list."""
    if isinstance(path, str):
        return file_sha256(path)
    from kd_detect.modules.cross_fit import combined_sha256

    return combined_sha256([file_sha256(p) for p in path])


@contextlib.contextmanager
def dropout_off(module: nn.Module) -> Iterator[None]:
    """Switch every dropout module inside ``module`` that is in train mode to eval mode for
    the block (only dropout: any other module keeps its mode), then back."""
    drops = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in drops:
        m.eval()
    try:
        yield
    finally:
        for m in drops:
            m.train()


def reduced_precision(precision: str | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``precision`` setting for the frozen teacher's
    forward: ``bfloat16`` for ``"bf16-mixed"``, ``float16`` for ``"16-mixed"``, ``None``
    (full precision) otherwise -- a true-bf16/fp16 or fp32 trainer runs the teacher as is."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def start_from_teacher(student: DetectorModule, teacher: DetectorModule, source: str | None = None) -> list[str]:
    """Copy ``teacher``'s head into ``student``'s, in place; returns the names of the sliced
    parameters (the input layer). ``source`` (the teacher's checkpoint) is named in errors.

    The source is the teacher's head (early fusion), or with late fusion the head of the
    stream the student reads (the student must read exactly one of the teacher's modalities);
    mid fusion has no head on the raw modalities and is refused. Source and student heads must
    be of one class and size, the source's modalities must include the student's (same dims),
    both models standardise their inputs or neither (the student takes the teacher's
    statistics), and their encoders are identities: the source's input is then
    ``[x_m for m in its modalities]`` along channels, and a parameter whose dim 1 is that
    width (the input layer) keeps the student's modalities' columns. Any other difference of
    shape is refused, naming the parameter.
    """
    named = f"{source} " if source else ""
    where = f"init_from: teacher {named}({type(teacher).__name__}, modalities {list(teacher.modalities)})"
    fusion = getattr(teacher, "fusion", "early")
    if fusion == "late":
        if len(student.modalities) != 1 or student.modalities[0] not in teacher.heads:
            raise TeacherCompatibilityError(
                f"{where}: a late-fusion teacher gives one stream's head; the student must read one of its "
                f"modalities, it reads {list(student.modalities)}"
            )
        head, modalities = teacher.heads[student.modalities[0]], list(student.modalities)
    elif fusion == "early":
        head, modalities = teacher.head, list(teacher.modalities)
    else:
        raise TeacherCompatibilityError(f"{where}: needs an early- or late-fusion teacher, this one is {fusion!r}")
    if type(head) is not type(student.head):
        raise TeacherCompatibilityError(
            f"{where}: its head is a {type(head).__name__}, the student's a {type(student.head).__name__}"
        )
    if teacher.standardize != student.standardize:
        raise TeacherCompatibilityError(
            f"{where}: standardize is {teacher.standardize} in the teacher and {student.standardize} in the student"
        )
    for name, module, names in (("teacher", teacher, modalities), ("student", student, student.modalities)):
        coded = [m for m in names if not isinstance(module.encoders[m], nn.Identity)]
        if coded:
            raise TeacherCompatibilityError(f"{where}: the {name} encodes {coded} before fusion; needs identity encoders")
    offsets, start = {}, 0
    for m in modalities:
        offsets[m] = (start, start + teacher.modality_dims[m])
        start += teacher.modality_dims[m]
    for m in student.modalities:
        if m not in offsets or teacher.modality_dims[m] != student.modality_dims[m]:
            raise TeacherCompatibilityError(
                f"{where}: the student reads {m!r} of dim {student.modality_dims[m]}, the teacher "
                + (f"of dim {teacher.modality_dims[m]}" if m in offsets else "does not read it")
            )
    columns = torch.cat([torch.arange(*offsets[m]) for m in student.modalities])
    source = head.state_dict()
    state, sliced = {}, []
    for name, value in student.head.state_dict().items():
        theirs = source.get(name)
        if theirs is not None and theirs.shape == value.shape:
            state[name] = theirs.clone()
        elif (theirs is not None and theirs.dim() >= 2 and theirs.shape[1] == start and value.shape[1] == len(columns)
              and theirs.shape[:1] + theirs.shape[2:] == value.shape[:1] + value.shape[2:]):
            state[name] = theirs.index_select(1, columns.to(theirs.device)).clone()
            sliced.append(name)
        else:
            raise TeacherCompatibilityError(
                f"{where}: head parameter {name!r} is {tuple(value.shape)} in the student and "
                f"{tuple(theirs.shape) if theirs is not None else 'missing'} in the teacher (another head size?)"
            )
    student.head.load_state_dict(state)
    if student.standardize:  # the weights read the teacher's standardised inputs: take its statistics
        for m in student.modalities:
            if teacher.standardizers[m].is_ready:
                ready = teacher.standardizers[m]
                student.standardizers[m].set_statistics(ready.mean.detach().cpu(), ready.std.detach().cpu())
    return sliced


class StudentModule(DetectorModule):
    """RGB-only detector distilled from one or more frozen teachers. Args as
    :class:`DetectorModule`, plus:

    Args:
        teachers: ``{name: checkpoint path}`` of frozen teachers run live; ``{name: [paths]}``
            makes that teacher cross-fitted (:mod:`kd_detect.modules.cross_fit`).
        teacher_caches: ``{name: cache path}`` read instead of running that teacher; when
            the same name is in ``teachers`` too, the cache must have been written from
            that checkpoint (sha256 compared) or it is refused as stale.
        distill: ``{name: plugin}`` -- e.g. ``atomic``, ``global``, ``boundary``.
        teacher_dims: filled in automatically (teacher feature dims) so the student can
            be rebuilt from its checkpoint without the teachers (export, inference).
        distill_from: ``"dropout"`` (default) or ``"clean"``: which student forward the
            plugins see (module docstring).
        auto_share: ``ρ`` of every ``weight: auto`` plugin (its share of the detection
            loss's gradient norm at the student's features), split equally among the
            teachers: with N teachers each teacher's copy of a loss gets ``ρ/N``, so adding
            a teacher does not add distillation pressure. Measured on the synthetic
            benchmark with two teachers (docs/results.md; 5 seeds): ``ρ/2`` per copy was
            ahead of ``ρ`` per copy on 4/5 seeds on test and on validation.
        auto_warmup: steps over which the auto weights are estimated, then fixed.
        init_from: name of a teacher in ``teachers`` to start the head from
            (:func:`start_from_teacher`); ``None`` (default): PyTorch's initialisation.
            Skipped when the module is rebuilt without teachers (from its own checkpoint).

    YAML::

        model:
          init_args:
            distill_from: clean
            auto_share: 0.3
            distill:
              atomic: {class_path: kd_detect.distill.AtomicContrastive, init_args: {weight: auto}}
    """

    def __init__(
        self,
        teachers: dict[str, str | list[str]] | None = None,
        teacher_caches: dict[str, str] | None = None,
        distill: dict[str, DistillationLoss] | None = None,
        teacher_dims: dict[str, int] | None = None,
        distill_from: DistillFrom = "dropout",
        auto_share: float = 0.5,
        auto_warmup: int = 50,
        init_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: every :class:`DetectorModule` argument (head, modalities, lr, ...)."""
        super().__init__(**kwargs)
        if distill_from not in ("dropout", "clean"):
            raise ValueError(f"distill_from must be 'dropout' or 'clean', got {distill_from!r}")
        self.distill_from = distill_from
        self.distill_factors: dict[str, float] = {}
        teachers, teacher_caches = dict(teachers or {}), dict(teacher_caches or {})
        if self.mixup > 0 and teacher_caches:
            raise TeacherCompatibilityError(
                f"mixup={self.mixup} with teacher_caches {sorted(teacher_caches)}: a cache holds the teacher's outputs "
                "on the unmixed videos; give the teacher checkpoints instead"
            )
        if self.time_stretch > 1 and teacher_caches:
            raise TeacherCompatibilityError(
                f"time_stretch={self.time_stretch} with teacher_caches {sorted(teacher_caches)}: a cache holds the "
                "teacher's outputs at the stored speed; give the teacher checkpoints instead"
            )
        # Frozen teachers live outside the module tree (see module docstring).
        object.__setattr__(self, "_teachers", {})
        object.__setattr__(self, "_caches", {})
        dims = dict(teacher_dims or {})
        for name, path in teacher_caches.items():
            # With the checkpoint named too, the cache must have been written by it.
            expected = teacher_sha256(teachers[name]) if name in teachers else None
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
        if init_from is not None and (teachers or teacher_caches):  # without both: a rebuild from a checkpoint
            if init_from not in teachers or not isinstance(teachers[init_from], str):
                raise TeacherCompatibilityError(
                    f"init_from: {init_from!r} is not a teacher checkpoint of this student "
                    f"(teachers: {sorted(teachers)}; a cache holds outputs, not weights, and a cross-fitted "
                    "teacher has no single head)"
                )
            # a cached teacher's checkpoint is read for its weights only, then let go
            live = self._teachers.get(init_from)
            if live is None:
                live = self._load_teacher(init_from, teachers[init_from])
            start_from_teacher(self, live, source=str(teachers[init_from]))
        plugins = dict(distill or {})
        self.distill = nn.ModuleDict()
        for tname, tdim in dims.items():
            per_teacher = nn.ModuleDict()
            for pname, plugin in plugins.items():
                if not isinstance(plugin, DistillationLoss):
                    raise TypeError(f"distill[{pname!r}] must be a DistillationLoss, got {type(plugin).__name__}")
                p = copy.deepcopy(plugin)
                p.setup(self.feature_dim, tdim, self.num_classes)
                if p.auto:  # ρ is a loss's share summed over teachers (see auto_share)
                    p.configure_auto(auto_share / len(dims), auto_warmup)
                per_teacher[pname] = p
            self.distill[tname] = per_teacher
        self.check_teacher_views()

    def check_teacher_views(self) -> None:
        """Refuse a plugin that needs one feature basis (``teacher_view == "space"``, see
        ``kd_detect.distill.base``) on a cross-fitted teacher whose fold teachers started
        from different seeds; warn when their seeds were not recorded."""
        for tname, plugins in self.distill.items():
            source = self._caches[tname] if tname in self._caches else self._teachers.get(tname)
            one = getattr(source, "shares_one_space", True)
            if one is True:
                continue
            needy = [f"{pname} ({type(p).__name__})" for pname, p in plugins.items()
                     if p.teacher_view == "space" and p.is_active]
            if not needy:
                continue
            seeds = getattr(source, "seeds", None) or getattr(source, "fold_seeds", None)
            what = (f"distill {', '.join(needy)} compares teacher features across videos or learns a map into the "
                    f"teacher's feature space, but teacher {tname!r} is cross-fitted from fold teachers")
            if one is False:
                raise TeacherCompatibilityError(
                    f"{what} started from different seeds ({seeds}), whose feature bases are unrelated; train "
                    "the fold teachers with one seed_everything, or distil with plugins that read the logits "
                    "or each video on its own (teacher_view 'logits'/'video')"
                )
            warnings.warn(f"{what} whose seeds were not recorded: they must have started from one seed to share "
                          "a feature basis (kd_detect.modules.cross_fit)", stacklevel=2)

    @property
    def distill_scale(self) -> float:
        """Product of the schedule factors (1.0 without schedules)."""
        scale = 1.0
        for factor in self.distill_factors.values():
            scale *= factor
        return scale

    # -------------------------------------------------------------- teachers
    def _load_teacher(self, name: str, path: str | list[str]) -> DetectorModule:
        if not isinstance(path, str):
            from kd_detect.modules.cross_fit import CrossFittedTeacher

            folds = [self._load_teacher(f"{name}[{k}]", p) for k, p in enumerate(path)]
            teacher = CrossFittedTeacher(folds, [str(p) for p in path])
            teacher.eval()
            teacher.sha256 = teacher_sha256(path)
            return teacher
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

    @contextlib.contextmanager
    def set_aside_for_copy(self) -> Iterator[None]:
        """As :meth:`DetectorModule.set_aside_for_copy`, and the frozen teachers and teacher
        caches too (not the student's weights; a preloaded cache can be large)."""
        teachers, caches = self._teachers, self._caches
        object.__setattr__(self, "_teachers", {})
        object.__setattr__(self, "_caches", {})
        try:
            with super().set_aside_for_copy():
                yield
        finally:
            object.__setattr__(self, "_teachers", teachers)
            object.__setattr__(self, "_caches", caches)

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

    def reads_unlabelled(self) -> list[str]:
        """The active distillation losses (``teacher/plugin``): they read every video of a batch."""
        return [f"{t}/{p}" for t, plugins in self.distill.items() for p, plugin in plugins.items() if plugin.is_active]

    def check_unlabelled(self, unlabelled: list[str]) -> None:
        super().check_unlabelled(unlabelled)
        if not unlabelled:
            return
        labelled_only = [f"{t}/{p} ({type(plugin).__name__})" for t, plugins in self.distill.items()
                         for p, plugin in plugins.items() if plugin.is_active and plugin.needs_labels]
        if labelled_only:
            raise UsageError(
                f"distill {', '.join(labelled_only)} reads the batch's labels, which the {len(unlabelled)} videos of "
                "data.unlabelled_subset do not have; switch its label option off (e.g. exclude_same_label: false) "
                "or unset data.unlabelled_subset")
        if self.mixup > 0:
            raise UsageError(f"mixup={self.mixup} with data.unlabelled_subset: mixup would mix labels with the "
                             "zeros of unlabelled videos; set mixup to 0 or unset data.unlabelled_subset")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and stage in ("fit", "validate") and self._teachers:
            self.check_data(dm.modality_dims)
        if dm is not None and stage == "fit":
            for name, teacher in self._teachers.items():
                if hasattr(teacher, "check_covers"):  # cross-fitted: every training video held out somewhere
                    teacher.check_covers(getattr(dm, "training_videos", []), name)
        if dm is not None and stage in ("fit", "validate") and getattr(dm, "path", None) is not None:
            for cache in self._caches.values():
                cache.check_source(dm.path)  # StaleCacheError: written from another feature file

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
            chosen = {p: m for p, m in plugins.items() if m.is_active}
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
                losses[(tname, pname)] = plugin(student, teacher_out, batch[MASK], batch[LABELS])
        return losses

    # ------------------------------------------------------------------ steps
    def distill_forward(self, out: HeadOutput, batch: dict[str, Any]) -> HeadOutput:
        """The student outputs the plugins see: ``out`` itself (``distill_from: dropout``),
        or a second forward with dropout off (``clean``)."""
        if self.distill_from == "dropout" or not self.training:
            return out
        with dropout_off(self):
            return self(batch)

    def observe_auto_weights(self, bce: Tensor, out: HeadOutput, seen: HeadOutput,
                             losses: dict[tuple[str, str], Tensor]) -> None:
        """Warm-up of the ``weight: auto`` plugins: hand each the step's gradient norms
        ``‖∂L_BCE/∂S‖`` (at ``out.features``) and ``‖∂L_k/∂S‖`` (at ``seen.features``),
        averaged over DDP ranks. Nothing is done once every auto weight is fixed."""
        pending = [key for key in losses if self.distill[key[0]][key[1]].auto
                   and not self.distill[key[0]][key[1]].auto_resolved]
        if not pending or not out.features.requires_grad:
            return
        (g_bce,) = torch.autograd.grad(bce, out.features, retain_graph=True, allow_unused=True)
        if g_bce is None:
            names = ", ".join(f"{t}/{p}" for t, p in pending)
            raise UsageError(
                f"distill {names}: weight: auto scales a term to the detection loss's gradient at the features the "
                f"plugins read, and the detection loss does not reach them (head {type(self.head).__name__} hands "
                "over features it does not classify from, e.g. Decomposed with detach_motion); give a fixed weight")
        norms = [g_bce.norm()]
        for key in pending:
            (g,) = torch.autograd.grad(losses[key], seen.features, retain_graph=True, allow_unused=True)
            norms.append(g.norm() if g is not None else bce.new_zeros(()))
        stacked = torch.stack([n.detach().float() for n in norms])
        if self._trainer is not None and self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="mean")
        values = stacked.tolist()
        for key, g in zip(pending, values[1:]):
            self.distill[key[0]][key[1]].auto_observe(values[0], g)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        batch = self.augment(batch)  # the teacher reads the same resampled and mixed videos
        out = self(batch)
        bsz = batch[MASK].shape[0]
        bce = self.detection_loss(out, batch)
        total = bce
        self.log("train/bce", bce, batch_size=bsz)
        single = len(self.distill) == 1
        seen = self.distill_forward(out, batch) if self.active_plugins() else out
        losses = self.distillation_losses(seen, batch)
        self.observe_auto_weights(bce, out, seen, losses)
        for (tname, pname), value in losses.items():
            plugin = self.distill[tname][pname]
            weighted = self.distill_scale * plugin.weight * value
            total = total + weighted
            key = pname if single else f"{tname}/{pname}"
            self.log(f"train/distill/{key}", value, batch_size=bsz)
            self.log(f"train/distill_weighted/{key}", weighted, batch_size=bsz)
            if plugin.auto:
                self.log(f"train/distill_weight/{key}", plugin.weight, batch_size=bsz)
        self.log("train/loss", total, prog_bar=True, batch_size=bsz)
        return total

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Belt and braces: teachers are not submodules, so nothing of theirs is in the
        # state dict; make sure of it.
        state = checkpoint.get("state_dict", {})
        leaked = [k for k in state if k.startswith("_teachers")]
        for k in leaked:
            del state[k]

    def student_state_dict(self) -> dict[str, Tensor]:
        """The bare detector's weights (encoders + head; no plugin heads, no teacher)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("distill.")}
