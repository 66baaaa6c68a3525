"""Which runs and models ``kd-detect plot RUN_DIR`` draws, and their scores and features.

Runs are :class:`~kd_detect.runs.RunDir` directories written by ``make train``. The data
file is the run config's ``data.path``; the RGB-only run defaults to the sibling
``<dataset>_rgb`` (``runs/synthetic_kd`` → ``runs/synthetic_rgb``), the teacher to the first
checkpoint in the student's ``model.init_args.teachers``. A missing comparison run only
removes its curves (one note on stderr). Every model is read through the one inference path
(:func:`~kd_detect.modules.inference.load_without_teachers`,
:func:`~kd_detect.modules.inference.iter_videos`). When a wandb run is active the PNGs are
logged to it too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kd_detect.data.feature_data import FeatureData
from kd_detect.data.format import FeatureFile
from kd_detect.distill import BoundarySaliency, GlobalContextualRelation
from kd_detect.errors import UsageError
from kd_detect.metrics.common import per_class_ap
from kd_detect.modules.inference import iter_videos, load_without_teachers, module_predictor
from kd_detect.modules.student import StudentModule
from kd_detect.modules.teacher import TeacherModule
from kd_detect.plots.figures import log_to_wandb, plot_ap_gain, plot_knowledge, plot_timeline
from kd_detect.runs import RunDir, section

PROG = "kd-detect plot"


@dataclass
class RunModel:
    """A model to draw: its legend label, checkpoint and loaded module."""

    label: str
    ckpt: Path
    module: Any
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # video -> (T, C)
    features: torch.Tensor | None = None  # (F, T) of the chosen video
    pooled: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (scores, labels) rows


def _role(module: Any) -> str:
    if isinstance(module, StudentModule):
        return "KD student"
    if isinstance(module, TeacherModule):
        return "teacher"
    return "RGB-only" if list(module.modalities) == ["rgb"] else "detector"


def _note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


def plugin_options(module: Any) -> dict[str, Any]:
    """Saliency strides/scale and relation temperature of the student's own plugins
    (the defaults of DESIGN.md §3 when it has none)."""
    opts: dict[str, Any] = {"strides": (1,), "dim_scale": True, "tau_r": 0.1}
    distill = getattr(module, "distill", None)
    for plugins in (distill.values() if distill is not None else []):
        for plugin in plugins.values():
            if isinstance(plugin, BoundarySaliency):
                opts["strides"], opts["dim_scale"] = tuple(plugin.strides), bool(plugin.dim_scale)
            if isinstance(plugin, GlobalContextualRelation):
                opts["tau_r"] = float(plugin.tau_r)
    return opts


def choose_video(feature_file: Any, ids: Sequence[str]) -> str:
    """The video with most ground-truth segments (first in file order on ties)."""
    return max(ids, key=lambda v: (len(feature_file.segments(v)), -ids.index(v)))


def _run_models(models: list[RunModel], data: Path, subset: str, video: str | None, batch_size: int) -> tuple[Any, str]:
    """Score every video of ``subset`` with every model; keep the chosen video's features."""
    modalities = sorted({m for rm in models for m in rm.module.modalities})
    dm = FeatureData(
        str(data), modalities=modalities, train_subset=subset, val_subset=subset, test_subset=subset,
        eval_batch_size=batch_size, require_labels=True,
    )
    ff = dm.feature_file
    ids = ff.videos_in(subset)
    if video is None:
        video = choose_video(ff, ids)
    elif video not in ids:
        raise UsageError(f"{data}: video {video!r} is not in subset {subset!r} ({len(ids)} videos, e.g. {ids[:3]})")
    for rm in models:
        for m, dim in rm.module.modality_dims.items():
            if dm.modality_dims.get(m) != dim:
                raise UsageError(f"{data}: modality {m!r} has dim {dm.modality_dims.get(m)}, {rm.ckpt} expects {dim}")
        if list(rm.module.classes) != list(dm.classes):
            raise UsageError(f"{data}: classes differ from those of {rm.ckpt}")
    for rm in models:
        predictor = module_predictor(rm.module, str(rm.ckpt))
        for vid, probs, feats, meta in iter_videos(predictor, dm.loader("test")):
            rm.pooled.append((probs, meta["labels"]))
            if vid == video:
                rm.features = feats
                rm.scores[vid] = probs.numpy()
    dm.close()
    return ff, video


def make_plots(
    run_dir: str | Path,
    video: str | None = None,
    rgb_run: str | Path | None = None,
    teacher_run: str | Path | None = None,
    data: str | Path | None = None,
    subset: str | None = None,
    max_classes: int = 8,
    batch_size: int = 8,
) -> list[Path]:
    """Draw every picture of the module docstring into ``RUN_DIR/plots``; returns the PNGs."""
    run = RunDir(run_dir)
    run_dir = run.path
    ckpt = run.checkpoint()
    cfg = run.config()
    main_module = load_without_teachers(ckpt)
    models = [RunModel(f"{_role(main_module)} ({run_dir.resolve().name})", ckpt, main_module)]
    main_role = _role(main_module)

    rgb = RunDir(rgb_run) if rgb_run else (run.rgb_sibling() if main_role != "RGB-only" else None)
    if rgb is not None and not rgb_run and not rgb.has_checkpoint():
        _note(f"{rgb.path} has no checkpoint yet; RGB-only curves and ap_gain.png are skipped")
        rgb = None
    elif rgb is not None:
        rgb_module = load_without_teachers(rgb.checkpoint())
        models.insert(0, RunModel(f"RGB-only ({rgb.name})", rgb.checkpoint(), rgb_module))
    elif main_role != "RGB-only" and not rgb_run:
        _note(f"no RGB-only run found next to {run_dir} (give --rgb-run DIR); its curves and ap_gain.png are skipped")

    teacher_ckpt: Path | None = None
    if teacher_run:
        teacher_ckpt = RunDir(teacher_run).checkpoint()
    elif main_role == "KD student":
        teachers = dict(section(cfg, "model").get("teachers") or {})
        if teachers:
            name, path = next(iter(teachers.items()))
            teacher_ckpt = None if isinstance(path, list) else run.resolve(path)
            if teacher_ckpt is None:
                _note(f"teacher {name!r} is cross-fitted ({len(path)} fold teachers, no single model); "
                      "teacher curves skipped (give --teacher-run DIR)")
            elif not teacher_ckpt.is_file():
                _note(f"teacher {name!r} checkpoint {path} not found (give --teacher-run DIR); teacher curves skipped")
                teacher_ckpt = None
    if teacher_ckpt is not None:
        teacher = load_without_teachers(teacher_ckpt)
        label = teacher_ckpt.parent.name if teacher_ckpt.name in ("best.ckpt", "last.ckpt") else teacher_ckpt.stem
        models.append(RunModel(f"teacher ({label})", teacher_ckpt, teacher))

    data_cfg = section(cfg, "data")
    data_path = Path(data) if data else run.data_path()
    if data_path is None:
        raise UsageError(f"{run_dir}: config.yaml names no data.path; give --data FILE")
    subset = subset or str(data_cfg.get("test_subset") or "testing")
    available = set(FeatureFile(data_path).modalities)
    for rm in list(models):
        missing = [m for m in rm.module.modalities if m not in available]
        if missing and rm.module is not main_module:
            _note(f"{data_path} lacks {missing} needed by {rm.label}; its curves are skipped")
            models.remove(rm)
    ff, video = _run_models(models, data_path, subset, video, batch_size)
    duration, segments, classes = ff.durations[video], ff.segments(video), ff.classes

    out_dir = run_dir / "plots"
    written = [
        plot_timeline(video, duration, segments, classes, {rm.label: rm.scores[video] for rm in models},
                      out_dir / "timeline.png", max_classes),
    ]
    opts = plugin_options(main_module)
    knowledge = {rm.label: rm.features for rm in reversed(models) if rm.features is not None}
    written.append(plot_knowledge(video, duration, segments, knowledge, out_dir / "knowledge.png", **opts))
    students = [rm for rm in models if rm.module is main_module]
    rgbs = [rm for rm in models if rm.label.startswith("RGB-only") and rm.module is not main_module]
    if rgbs and main_role != "RGB-only":
        aps = []
        for rm in (students[0], rgbs[0]):
            scores = torch.cat([s for s, _ in rm.pooled])
            labels = torch.cat([lab for _, lab in rm.pooled])
            aps.append(per_class_ap(scores, labels)[0].numpy())
        written.append(plot_ap_gain(classes, aps[0], aps[1], out_dir / "ap_gain.png",
                                    students[0].label.split(" (")[0], "RGB-only"))
    log_to_wandb(written)
    return written
