"""The pictures of ``kd-detect plot RUN_DIR`` (matplotlib, Agg; PNGs in ``RUN_DIR/plots/``).

* ``timeline.png`` -- one test video (default: the one with most ground-truth segments):
  ground-truth segments, then the per-step probabilities of the RGB-only baseline, the KD
  student and the teacher for the most active classes (class names on the axis).
* ``knowledge.png`` -- what the sequence-level distillation transfers, for the same video:
  the boundary saliency ``b_t`` (DESIGN.md §3, :func:`kd_detect.distill.boundary.saliency`)
  of teacher, KD student and RGB-only features, and their global relation matrices
  ``R[i, j] = softmax_j(x̂_i·x̂_j / τ_r)`` (as :mod:`kd_detect.distill.global_relation`).
* ``ap_gain.png`` -- per-class test AP of the KD student minus the RGB-only baseline, sorted.
* :func:`compare_bar_chart` -- mean ± std per run, for ``make compare``.

This module only draws (arrays in, PNG out, written atomically); which runs and models are
drawn is :mod:`kd_detect.plots.runs`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from kd_detect.distill._common import l2n
from kd_detect.distill.boundary import saliency
from kd_detect.io import atomic_write

GT_COLOR = "#2c7fb8"
ROLE_COLORS = {"teacher": "#d95f02", "KD student": "#1b9e77", "RGB-only": "#7570b3"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
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
    return Rectangle((start, y - 0.45), end - start, 0.9, fill=False, edgecolor="white", linewidth=1.0)


def boundary_saliency(
    features: torch.Tensor, strides: Sequence[int] = (1,), dim_scale: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``b_t`` of one video's features ``(F, T)`` and where it is defined (the plugin's own
    :func:`~kd_detect.distill.boundary.saliency` on L2-normalised features)."""
    x = l2n(features.float()[None], 1)
    mask = torch.ones(1, x.shape[-1], dtype=torch.bool)
    b, defined = saliency(x, mask, tuple(int(k) for k in strides), dim_scale)
    return b[0].numpy(), defined[0].numpy()


def relation_matrix(features: torch.Tensor, tau_r: float = 0.1) -> np.ndarray:
    """``R[i, j] = softmax_j(x̂_i·x̂_j / τ_r)`` of one video's features ``(F, T)`` (``T×T``)."""
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
    ax.set_xlabel(
        f"AP({student_label}) − AP({rgb_label}), percentage points   "
        f"(bar labels: gain (AP {rgb_label} → {student_label}))"
    )
    ax.set_title(
        f"per-class test AP, {student_label} vs {rgb_label}{title_extra}\n"
        f"mean over {len(keep)} classes with positives: {mean:+.2f} points",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, out_png)
