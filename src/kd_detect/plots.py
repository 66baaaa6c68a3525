"""Pictures of a run: ``kd-detect plot RUN_DIR`` (matplotlib, Agg; PNGs in ``RUN_DIR/plots/``).

* ``timeline.png`` -- one test video (default: the one with most ground-truth segments):
  ground-truth segments, then the per-step probabilities of the RGB-only baseline, the KD
  student and the teacher for the most active classes (class names on the axis).
* ``knowledge.png`` -- what the sequence-level distillation transfers, for the same video:
  the boundary saliency ``b_t`` (DESIGN.md §3, :func:`kd_detect.distill.boundary.saliency`)
  of teacher, KD student and RGB-only features, and their global relation matrices
  ``R[i, j] = softmax_j(x̂_i·x̂_j / τ_r)`` (as :mod:`kd_detect.distill.global_relation`).
* ``ap_gain.png`` -- per-class test AP of the KD student minus the RGB-only baseline, sorted.
* :func:`compare_bar_chart` -- mean ± std per run, for ``make compare``.

Runs are directories written by ``make train`` (``runs/<EXP>/`` with ``best.ckpt``,
``config.yaml``, ``metrics.json``). The data file is the run config's ``data.path``; the
RGB-only run defaults to the sibling ``<dataset>_rgb`` (``runs/synthetic_kd`` →
``runs/synthetic_rgb``), the teacher to the first checkpoint in the student's
``model.init_args.teachers``. A missing comparison run only removes its curves (one note on
stderr). When a wandb run is active the PNGs are logged to it too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from kd_detect.data.batch import to_model_layout

PROG = "kd-detect plot"
GT_COLOR = "#2c7fb8"
ROLE_COLORS = {"teacher": "#d95f02", "KD student": "#1b9e77", "RGB-only": "#7570b3"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    return out


def log_to_wandb(paths: Sequence[Path], prefix: str = "plots") -> bool:
    """Log PNGs to the active wandb run, if there is one (wandb is never imported here just
    to find out: without a prior import no run can be active)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    wandb.log({f"{prefix}/{Path(p).stem}": wandb.Image(str(p)) for p in paths})
    return True


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


# ------------------------------------------------------------------------ the pictures
def compare_bar_chart(
    rows: list[dict[str, Any]],
    out_png: str | Path,
    ylabel: str = "test frame mAP",
    title: str = "RGB-only vs teacher vs KD student",
) -> Path:
    """Bar chart of ``rows`` = ``[{"name", "mean", "std"}, ...]`` (error bars = std, value on
    each bar). Returns the PNG path."""
    if not rows:
        raise ValueError("compare_bar_chart: no rows to plot")
    names = [str(r["name"]) for r in rows]
    means = np.array([float(r["mean"]) for r in rows])
    stds = np.array([float(r.get("std") or 0.0) for r in rows])
    fig = _figure(max(4.5, 0.8 * len(rows) + 2), 4.2)
    ax = fig.subplots()
    x = np.arange(len(rows))
    colors = [
        ROLE_COLORS["teacher"] if "teacher" in n else ROLE_COLORS["RGB-only"] if "rgb" in n.lower() else ROLE_COLORS["KD student"]
        for n in names
    ]
    ax.bar(x, means, yerr=stds, capsize=4, color=colors, edgecolor="black", linewidth=0.6)
    top = float(np.max(means + stds)) if len(rows) else 1.0
    for xi, m, s in zip(x, means, stds):
        ax.text(xi, m + s + 0.01 * top, f"{m:.3f}" + (f"\n±{s:.3f}" if s else ""), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    rotate = len(rows) > 4 or max(len(n) for n in names) > 12
    ax.set_xticklabels(names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, out_png)


def active_classes(
    segments: np.ndarray, scores: Sequence[np.ndarray], num_classes: int, max_classes: int = 8
) -> list[int]:
    """Classes to show for one video: those with ground truth (most covered time first), then
    the highest-scoring others, at most ``max_classes``, in class-id order."""
    cover = np.zeros(num_classes)
    for c, s, e in np.asarray(segments, dtype=np.float64).reshape(-1, 3):
        cover[int(c)] += max(e - s, 1e-6)
    chosen = [int(c) for c in np.argsort(-cover, kind="stable") if cover[c] > 0][:max_classes]
    if len(chosen) < max_classes and scores:
        peak = np.max([np.asarray(s).max(0) for s in scores], axis=0)
        for c in np.argsort(-peak, kind="stable"):
            if len(chosen) >= max_classes:
                break
            if int(c) not in chosen:
                chosen.append(int(c))
    return sorted(chosen)


def plot_timeline(
    video_id: str,
    duration: float,
    segments: np.ndarray,
    classes: Sequence[str],
    scores: dict[str, np.ndarray],
    out_png: str | Path,
    max_classes: int = 8,
) -> Path:
    """Ground-truth segments vs per-step probabilities ``scores[label] (T, C)`` of each model."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 3)
    shown = active_classes(segments, list(scores.values()), len(classes), max_classes)
    k = len(shown)
    row = {c: i for i, c in enumerate(shown)}
    names = [_short(classes[c]) for c in shown]
    panel_h = 0.32 * k + 0.7
    fig = _figure(11, panel_h * (1 + len(scores)) + 1.0)
    # a narrow column for the colour bar keeps every panel the same width (aligned times)
    grid = fig.add_gridspec(1 + len(scores), 2, width_ratios=[1.0, 0.018], wspace=0.02)
    axes = [fig.add_subplot(grid[0, 0])]
    axes += [fig.add_subplot(grid[i, 0], sharex=axes[0]) for i in range(1, 1 + len(scores))]
    gt = axes[0]
    for c, s, e in segments:
        if int(c) in row:
            gt.broken_barh([(s, max(e - s, duration / 500))], (row[int(c)] - 0.38, 0.76), color=GT_COLOR)
    gt.set_title(f"ground truth ({len(segments)} segments)", fontsize=10, loc="left")
    image = None
    for ax, (label, sc) in zip(axes[1:], scores.items()):
        sc = np.asarray(sc)
        image = ax.imshow(
            sc[:, shown].T, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest",
            extent=(0.0, duration, k - 0.5, -0.5),
        )
        for c, s, e in segments:  # ground truth outlined on every model's scores
            if int(c) in row:
                ax.add_patch(_outline(s, e, row[int(c)]))
        ax.set_title(f"{label}: per-step probability (white boxes: ground truth)", fontsize=10, loc="left")
    for ax in axes:
        ax.set_yticks(range(k))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_xlim(0.0, duration)
    axes[0].grid(axis="x", alpha=0.3)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"video {video_id}: ground truth vs predictions ({k} most active classes)", fontsize=11)
    # gaps of ~0.6 inch between panels, room for the suptitle above the first one
    fig.subplots_adjust(hspace=0.6 / (panel_h - 0.3), top=1 - 0.85 / fig.get_figheight())
    if image is not None:
        fig.colorbar(image, cax=fig.add_subplot(grid[1:, 1]), label="probability")
    return _save(fig, out_png)


def _outline(start: float, end: float, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((start, y - 0.45), end - start, 0.9, fill=False, edgecolor="white", linewidth=1.0)


def boundary_saliency(
    features: torch.Tensor, strides: Sequence[int] = (1,), dim_scale: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``b_t`` of one video's features ``(F, T)`` and where it is defined (the plugin's own
    :func:`~kd_detect.distill.boundary.saliency` on L2-normalised features)."""
    from kd_detect.distill._common import l2n
    from kd_detect.distill.boundary import saliency

    x = l2n(features.float()[None], 1)
    mask = torch.ones(1, x.shape[-1], dtype=torch.bool)
    b, defined = saliency(x, mask, tuple(int(k) for k in strides), dim_scale)
    return b[0].numpy(), defined[0].numpy()


def relation_matrix(features: torch.Tensor, tau_r: float = 0.1) -> np.ndarray:
    """``R[i, j] = softmax_j(x̂_i·x̂_j / τ_r)`` of one video's features ``(F, T)`` (``T×T``)."""
    from kd_detect.distill._common import l2n

    x = l2n(features.float(), 0)
    return torch.softmax(x.T @ x / tau_r, dim=-1).numpy()


def plot_knowledge(
    video_id: str,
    duration: float,
    segments: np.ndarray,
    features: dict[str, torch.Tensor],
    out_png: str | Path,
    strides: Sequence[int] = (1,),
    dim_scale: bool = True,
    tau_r: float = 0.1,
) -> Path:
    """Boundary saliency curves and global relation matrices of each model's features."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 3)
    n = len(features)
    fig = _figure(max(10.0, 3.6 * n), 8.0)
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 1.45], hspace=0.55, wspace=0.28)
    ax = fig.add_subplot(grid[0, :])
    for label, feats in features.items():
        b, defined = boundary_saliency(feats, strides, dim_scale)
        t = np.arange(len(b)) * duration / len(b)
        ax.plot(t[defined], b[defined], label=label, color=_role_color(label), linewidth=1.3)
    edges = sorted({float(v) for row in segments for v in row[1:]})
    for i, v in enumerate(edges):
        ax.axvline(v, color="gray", linestyle=":", linewidth=0.9, label="ground-truth start/end" if i == 0 else None)
    ax.set_xlim(0, duration)
    ax.set_xlabel("time (s)")
    scale = " / √F" if dim_scale else ""
    ax.set_ylabel(f"b_t = ‖x̂_t − x̂_(t−k)‖₁{scale}")
    ax.set_title(f"action boundary saliency (stride {', '.join(map(str, strides))}) — video {video_id}", fontsize=10, loc="left")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=n + 1, frameon=False)
    ax.grid(alpha=0.3)
    norm = LogNorm(vmin=1e-4, vmax=1.0)
    image = None
    axes = []
    for j, (label, feats) in enumerate(features.items()):
        r = np.clip(relation_matrix(feats, tau_r), 1e-4, 1.0)
        rax = fig.add_subplot(grid[1, j])
        image = rax.imshow(r, cmap="magma", norm=norm, extent=(0, duration, duration, 0), interpolation="nearest")
        rax.set_title(_short(label, 40), fontsize=9, color=_role_color(label))
        rax.set_xlabel("time j (s)")
        if j == 0:
            rax.set_ylabel("time i (s)")
        axes.append(rax)
    if image is not None:
        fig.colorbar(image, ax=axes, label=f"R[i, j] = softmax_j(x̂_i·x̂_j / {tau_r:g})", fraction=0.03, pad=0.02)
    fig.suptitle("the knowledge transferred: boundary saliency and global contextual relations", fontsize=11)
    return _save(fig, out_png)


def _role_color(label: str) -> str:
    for role, color in ROLE_COLORS.items():
        if label.startswith(role):
            return color
    return "black"


def plot_ap_gain(
    classes: Sequence[str],
    ap_student: np.ndarray,
    ap_rgb: np.ndarray,
    out_png: str | Path,
    student_label: str = "KD student",
    rgb_label: str = "RGB-only",
    max_bars: int = 40,
) -> Path:
    """Per-class AP of the student minus the RGB-only baseline (percentage points), sorted.
    Classes without test positives (NaN AP) are left out; with more than ``max_bars``
    classes the largest gains and losses are shown."""
    ap_student, ap_rgb = np.asarray(ap_student, dtype=np.float64), np.asarray(ap_rgb, dtype=np.float64)
    diff = 100.0 * (ap_student - ap_rgb)
    keep = np.flatnonzero(np.isfinite(diff))
    if not len(keep):
        raise ValueError("plot_ap_gain: no class has a finite AP difference (no test positives?)")
    order = keep[np.argsort(-diff[keep], kind="stable")]
    title_extra = ""
    if len(order) > max_bars:
        half = max_bars // 2
        order = np.concatenate([order[:half], order[-half:]])
        title_extra = f" (top {half} gains and losses of {len(keep)} classes)"
    values = diff[order]
    fig = _figure(8.5, 0.26 * len(order) + 1.6)
    ax = fig.subplots()
    y = np.arange(len(order))
    ax.barh(y, values, color=np.where(values >= 0, "#1b9e77", "#d95f02"), edgecolor="black", linewidth=0.4)
    span = float(np.max(np.abs(values))) or 1.0
    for yi, v, c in zip(y, values, order):
        ax.text(v + (0.01 if v >= 0 else -0.01) * span, yi, f"{v:+.1f}  ({100 * ap_rgb[c]:.0f}→{100 * ap_student[c]:.0f})",
                va="center", ha="left" if v >= 0 else "right", fontsize=7)
    ax.set_xlim(min(0.0, values.min()) - 0.35 * span, max(0.0, values.max()) + 0.35 * span)
    ax.set_yticks(y)
    ax.set_yticklabels([_short(classes[c], 36) for c in order], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    mean = float(np.mean(diff[keep]))
    ax.set_xlabel(f"AP({student_label}) − AP({rgb_label}), percentage points   (bar labels: gain (AP {rgb_label} → {student_label}))")
    ax.set_title(
        f"per-class test AP, {student_label} vs {rgb_label}{title_extra}\n"
        f"mean over {len(keep)} classes with positives: {mean:+.2f} points",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, out_png)


# ------------------------------------------------------------------------ runs and models
@dataclass
class RunModel:
    """A model to draw: its legend label, checkpoint and loaded module."""

    label: str
    ckpt: Path
    module: Any
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # video -> (T, C)
    features: torch.Tensor | None = None  # (F, T) of the chosen video
    pooled: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (scores, labels) rows


def run_checkpoint(run_dir: Path) -> Path:
    """``best.ckpt`` of a run directory (``last.ckpt`` when there is no best)."""
    from kd_detect.tools import UsageError

    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: run directory not found (runs are written by `make train` to runs/<EXP>/)")
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise UsageError(f"{run_dir}: no best.ckpt or last.ckpt in the run directory (did training finish?)")


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config of a run (``config.yaml``), ``{}`` when absent."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        from kd_detect.tools import UsageError

        raise UsageError(f"{path}: invalid YAML ({err})") from None
    return cfg if isinstance(cfg, dict) else {}


def _section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    sec = cfg.get(name) or {}
    if isinstance(sec, dict) and isinstance(sec.get("init_args"), dict):
        return sec["init_args"]
    return sec if isinstance(sec, dict) else {}


def resolve(path: str | Path, run_dir: Path) -> Path:
    """A path from a run config: as given (relative to the working directory) or, failing
    that, relative to the repository holding ``runs/<EXP>/``."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    root = run_dir.resolve().parent.parent
    return root / p if (root / p).exists() else p


def default_rgb_run(run_dir: Path) -> Path | None:
    """The sibling RGB-only run: ``<prefix>_rgb`` for the longest ``_``-prefix of the run name
    that has one (``synthetic_kd`` → ``synthetic_rgb``, ``pku_mmd_kd`` → ``pku_mmd_rgb``)."""
    parts = run_dir.resolve().name.split("_")
    for n in range(len(parts), 0, -1):
        candidate = run_dir.parent / ("_".join(parts[:n]) + "_rgb")
        if candidate.resolve() != run_dir.resolve() and candidate.is_dir():
            return candidate
    return None


def _load(ckpt: Path) -> Any:
    from kd_detect.modules import StudentModule
    from kd_detect.modules.loading import checkpoint_class, load_detector, read_checkpoint

    cls = checkpoint_class(read_checkpoint(ckpt), ckpt)
    overrides = {"teachers": {}, "teacher_caches": {}} if issubclass(cls, StudentModule) else {}
    return load_detector(ckpt, **overrides)


def _role(module: Any) -> str:
    from kd_detect.modules import StudentModule, TeacherModule

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
            if type(plugin).__name__ == "BoundarySaliency":
                opts["strides"], opts["dim_scale"] = tuple(plugin.strides), bool(plugin.dim_scale)
            if type(plugin).__name__ == "GlobalContextualRelation":
                opts["tau_r"] = float(plugin.tau_r)
    return opts


def choose_video(feature_file: Any, ids: Sequence[str]) -> str:
    """The video with most ground-truth segments (first in file order on ties)."""
    return max(ids, key=lambda v: (len(feature_file.segments(v)), -ids.index(v)))


def _run_models(models: list[RunModel], data: Path, subset: str, video: str | None, batch_size: int) -> tuple[Any, str]:
    """Score every video of ``subset`` with every model; keep the chosen video's features."""
    from kd_detect.data.datamodule import FeatureDataModule
    from kd_detect.tools import UsageError

    modalities = sorted({m for rm in models for m in rm.module.modalities})
    dm = FeatureDataModule(
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
    dm.setup("test")
    with torch.no_grad():
        for batch in map(to_model_layout, dm.test_dataloader()):
            mask = batch["mask"]
            labels = batch["labels"].transpose(1, 2)[mask]
            for rm in models:
                out = rm.module(batch)
                probs = torch.sigmoid(out.logits.float())
                rm.pooled.append((probs.transpose(1, 2)[mask], labels))
                for i, vid in enumerate(batch["meta"]["video_id"]):
                    n = int(mask[i].sum())
                    if vid == video:
                        rm.features = out.features[i, :, :n].float().clone()
                        rm.scores[vid] = probs[i, :, :n].T.numpy()
    dm.teardown("test")
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
    from kd_detect.metrics.common import per_class_ap
    from kd_detect.tools import UsageError

    run_dir = Path(run_dir)
    ckpt = run_checkpoint(run_dir)
    cfg = run_config(run_dir)
    main_module = _load(ckpt)
    models = [RunModel(f"{_role(main_module)} ({run_dir.resolve().name})", ckpt, main_module)]
    main_role = _role(main_module)

    rgb_dir = Path(rgb_run) if rgb_run else (default_rgb_run(run_dir) if main_role != "RGB-only" else None)
    if rgb_dir is not None and not rgb_run and not any((rgb_dir / n).is_file() for n in ("best.ckpt", "last.ckpt")):
        _note(f"{rgb_dir} has no checkpoint yet; RGB-only curves and ap_gain.png are skipped")
        rgb_dir = None
    elif rgb_dir is not None:
        rgb_module = _load(run_checkpoint(rgb_dir))
        models.insert(0, RunModel(f"RGB-only ({rgb_dir.resolve().name})", run_checkpoint(rgb_dir), rgb_module))
    elif main_role != "RGB-only" and not rgb_run:
        _note(f"no RGB-only run found next to {run_dir} (give --rgb-run DIR); its curves and ap_gain.png are skipped")

    teacher_ckpt: Path | None = None
    if teacher_run:
        teacher_ckpt = run_checkpoint(Path(teacher_run))
    elif main_role == "KD student":
        teachers = dict(_section(cfg, "model").get("teachers") or {})
        if teachers:
            name, path = next(iter(teachers.items()))
            teacher_ckpt = resolve(path, run_dir)
            if not teacher_ckpt.is_file():
                _note(f"teacher {name!r} checkpoint {path} not found (give --teacher-run DIR); teacher curves skipped")
                teacher_ckpt = None
    if teacher_ckpt is not None:
        teacher = _load(teacher_ckpt)
        label = teacher_ckpt.parent.name if teacher_ckpt.name in ("best.ckpt", "last.ckpt") else teacher_ckpt.stem
        models.append(RunModel(f"teacher ({label})", teacher_ckpt, teacher))

    data_cfg = _section(cfg, "data")
    data_path = Path(data) if data else (resolve(data_cfg["path"], run_dir) if data_cfg.get("path") else None)
    if data_path is None:
        raise UsageError(f"{run_dir}: config.yaml names no data.path; give --data FILE")
    subset = subset or str(data_cfg.get("test_subset") or "testing")

    from kd_detect.data.format import FeatureFile

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


def main(argv: list[str]) -> int:
    """``kd-detect plot RUN_DIR [--video ID] [--rgb-run DIR] [--teacher-run DIR] [--data FILE]``."""
    from kd_detect.tools import user_errors

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Draw a run's pictures into RUN_DIR/plots: timeline of one test video (ground truth vs "
        "RGB-only vs KD student vs teacher), boundary saliency + global relations, per-class AP gain.",
    )
    parser.add_argument("run_dir", help="run directory (runs/<EXP>/ with best.ckpt and config.yaml)")
    parser.add_argument("--video", default=None, help="video id (default: the test video with most segments)")
    parser.add_argument("--rgb-run", default=None, help="RGB-only run directory (default: sibling <dataset>_rgb)")
    parser.add_argument("--teacher-run", default=None, help="teacher run directory (default: the student's teacher)")
    parser.add_argument("--data", default=None, help="feature file (default: data.path of the run's config)")
    parser.add_argument("--subset", default=None, help="subset to evaluate (default: the config's test_subset)")
    parser.add_argument("--max-classes", type=int, default=8, help="classes shown in the timeline")
    args = parser.parse_args(argv)
    with user_errors(PROG, also=()):
        written = make_plots(args.run_dir, args.video, args.rgb_run, args.teacher_run, args.data, args.subset,
                             max(1, args.max_classes))
        for path in written:
            print(f"wrote {path}")
    return 0


__all__ = [
    "compare_bar_chart",
    "plot_timeline",
    "plot_knowledge",
    "plot_ap_gain",
    "boundary_saliency",
    "relation_matrix",
    "make_plots",
    "log_to_wandb",
    "main",
]
