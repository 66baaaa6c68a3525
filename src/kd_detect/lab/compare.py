"""``make compare [SEEDS=5] [ABLATION_SEEDS=3] [JOBS=2]``: RGB-only vs teacher vs the method,
with an RGB ceiling and a linear probe as yardsticks, each ablation and each KD baseline,
over several seeds, on the synthetic benchmark.

Every row is a real ``kd-detect fit --test_after_fit=true`` run of its experiment file
(``experiments/...``) with ``--seed_everything=s``; the students of seed ``s`` distil from
the teacher trained with seed ``s`` (the RGB+flow+pose teacher, or for the row "from the
teacher without RGB" the flow+pose teacher of that seed, trained first). The four main rows (RGB-only, teacher, ours, RGB
ceiling) run ``--seeds`` seeds, the ablations and baselines ``--ablation-seeds``. Runs go to
``runs/compare/seed<s>/<experiment>/``; a run whose ``metrics.json`` exists is not repeated,
so an interrupted comparison resumes (a finished run whose training videos came in another
seed's order, as every run before 2026-12-07 did, stops the comparison with one line:
:func:`order_mismatches`, checked for every run under ``--out`` before anything trains).

The yardsticks:

* **RGB ceiling**: RGB-only trained on 4x the labelled training videos of the same world
  (``data/synthetic_ceiling.h5``: the same validation and testing videos), i.e. what more
  labelled RGB data would buy. A student that closes the gap to the ceiling learns from the
  teacher what labels alone would have taught. For another world (``-- --data.path=...``) the
  ceiling needs that world's 4x file, ``--ceiling-data``; without it the row is left out.
* **Linear probe**: a ridge reader of RGB with +-2 steps of context (``kd_detect.lab.probe``,
  deterministic: one run). A floor that the RGB-only detector must reach.
* **Linear probe taught by the teacher** (``probe_taught``): the same reader, also fit to
  the probabilities of seed ``s``'s teacher on the 432 unlabelled videos
  (``probe --teacher``). What the teacher's outputs give a reader that has no variance to
  lose: a floor for the students that read those videos, as the probe is for RGB-only.
* **Self-distillation control** (``ablations/synthetic_kd_rgb_teacher``): the method with
  its defaults, distilling from an RGB-only teacher (the RGB-only recipe trained with seed
  ``s + 100``). It knows nothing the student's own input does not carry, so what ours gains
  over it, not over RGB-only, is what the other modalities bring.

Writes ``runs/compare/report.md``, ``report.json`` and the bar chart ``compare.png``. Per row:
mean +- std of the test frame mAP; *gap closed* to the teacher ``(row - rgb) / (teacher - rgb)``
and to the ceiling ``(row - rgb) / (ceiling - rgb)`` (from the means over the seeds the row
shares with RGB-only and that reference); the difference to
RGB-only paired by seed with its 95 % Student-t interval, ``mean +- t_{0.975, n-1} s / sqrt(n)``;
and on how many seeds the row is above RGB-only.

Variants of the method (another weight, τ, window...) are compared against the same
references with ``--reference``: ``python -m kd_detect.lab.compare --out runs/lambda0.3
--reference runs/compare --only synthetic_kd -- --model.init_args.distill.atomic.init_args.weight=0.3``
takes the RGB-only, teacher and ceiling runs (and the teachers' checkpoints) of
``runs/compare``, training them there only when missing; ``python -m kd_detect.lab.pair
runs/lambda0.3:synthetic_kd runs/compare`` then pairs the variant with ours by seed
(:mod:`kd_detect.lab.pair`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kd_detect.errors import UsageError
from kd_detect.io import atomic_write
from kd_detect.plots.figures import compare_bar_chart
from kd_detect.runs import RunDir, training_order_seed

RGB, TEACHER, OURS = "synthetic_rgb", "synthetic_teacher", "synthetic_kd"
CEILING, PROBE = "synthetic_rgb_ceiling", "probe"
#: the linear probe of RGB taught the teacher's probabilities on the unlabelled videos (per seed)
PROBE_TAUGHT = "probe_taught"
#: rows computed here, not trained by ``kd-detect fit``
COMPUTED = (PROBE, PROBE_TAUGHT)
FLOWPOSE_TEACHER = "synthetic_teacher_flowpose"
FLOW_TEACHER, POSE_TEACHER = "synthetic_teacher_flow", "synthetic_teacher_pose"
LATE_TEACHER = "synthetic_teacher_late"
#: the RGB-only recipe as a teacher, for the self-distillation control
RGB_TEACHER = "synthetic_teacher_rgb"
#: the teacher with ModDrop (flow and pose dropped from training videos), and the teacher
#: without channel input dropout (as every teacher trained until 2026-12-04)
MODDROP_TEACHER, NO_DROPOUT_TEACHER = "synthetic_teacher_moddrop", "synthetic_teacher_no_input_dropout"
TWO_TEACHERS = "synthetic_kd_two_teachers"
#: the teacher's recipe trained from another seed (seed + 200): the ensemble's second member
SECOND_TEACHER = "synthetic_teacher_second"
REFERENCES = (RGB, TEACHER, CEILING)
#: rows trained from the labels alone, like RGB-only, but not references
RGB_MIXUP = "ablations/synthetic_rgb_mixup"
#: the decomposed student (two branches, distillation into one) and its RGB-only control
DECOMPOSED, RGB_DECOMPOSED = "ablations/synthetic_kd_decomposed", "ablations/synthetic_rgb_decomposed"
#: RGB-only with the time stretch (temporal scale augmentation)
RGB_TIME_STRETCH = "ablations/synthetic_rgb_time_stretch"
#: RGB-only with a 5-step input projection, and with the cosine learning-rate schedule
RGB_INPUT_KERNEL, RGB_COSINE = "ablations/synthetic_rgb_input_kernel5", "ablations/synthetic_rgb_cosine"
LABELS_ONLY = (RGB_MIXUP, RGB_DECOMPOSED, RGB_TIME_STRETCH, RGB_INPUT_KERNEL, RGB_COSINE)
#: the fold teachers of a cross-fitted teacher (experiments/folds/<teacher>_fold<k>.yaml)
FOLDS = 4


def fold_teachers(teacher: str) -> list[str]:
    """The fold-teacher experiments of ``teacher`` cross-fitted (kd_detect.modules.cross_fit)."""
    return [f"folds/{teacher}_fold{k}" for k in range(FOLDS)]


CROSS_FITTED, RGB_CROSS_FITTED = "ablations/synthetic_kd_cross_fitted", "ablations/synthetic_kd_rgb_teacher_cross_fitted"
#: logit KD from the same two cross-fitted teachers (held-out logits on the labelled videos)
LOGIT_CROSS_FITTED = "ablations/synthetic_logit_kd_cross_fitted"
RGB_LOGIT_CROSS_FITTED = "ablations/synthetic_logit_kd_rgb_teacher_cross_fitted"
#: semi-supervised rows: the labelled training videos plus the ceiling's extra videos without
#: labels (data/synthetic_unlabelled.h5, data.unlabelled_subset)
UNLABELLED, RGB_UNLABELLED = "ablations/synthetic_kd_unlabelled", "ablations/synthetic_kd_rgb_teacher_unlabelled"
LOGIT_UNLABELLED = "ablations/synthetic_kd_plus_logit_kd_unlabelled"
RGB_LOGIT_UNLABELLED = "ablations/synthetic_kd_rgb_teacher_plus_logit_kd_unlabelled"
#: the recipe without the method's three losses: what they add on top of logit KD
LOGIT_ONLY_UNLABELLED = "ablations/synthetic_logit_kd_unlabelled"
#: leave-one-out inside the recipe: each of the three losses at weight 0
RECIPE_WITHOUT = tuple(f"{LOGIT_UNLABELLED}_without_{loss}" for loss in ("atomic", "global", "boundary"))
#: the recipe's setting for the feature baselines: each (weight: auto) + logit KD on the same
#: videos from the same teacher, i.e. the recipe with the baseline's loss for the three losses
BASELINE_NAMES = {"fitnets": "FitNets", "mars": "MARS (feature MSE)", "crd": "CRD", "pkt": "PKT",
                  "sp": "similarity-preserving", "at": "attention transfer", "rkd": "RKD"}
BASELINES_UNLABELLED = tuple(f"ablations/synthetic_{m}_plus_logit_kd_unlabelled" for m in BASELINE_NAMES)
#: the recipe with a baseline's feature term beside the three losses, not in their place
RECIPE_PLUS_FITNETS = "ablations/synthetic_kd_plus_fitnets_plus_logit_kd_unlabelled"
#: the recipe with the decomposed student (the three losses into its motion branch)
RECIPE_DECOMPOSED = "ablations/synthetic_kd_plus_logit_kd_unlabelled_decomposed"
#: rows that read the unlabelled videos' file (``--unlabelled-data`` on another world, else left out there)
UNLABELLED_ROWS = (UNLABELLED, RGB_UNLABELLED, LOGIT_UNLABELLED, RGB_LOGIT_UNLABELLED, LOGIT_ONLY_UNLABELLED,
                   *RECIPE_WITHOUT, *BASELINES_UNLABELLED, RECIPE_PLUS_FITNETS, RECIPE_DECOMPOSED)
#: the row each ablation or baseline is paired against in the report's "ours − row" table when
#: it is not ours (the labelled-only student): the variants of a semi-supervised row change
#: one thing of that row, so that row is the method they are measured against
VERSUS: dict[str, str] = {
    RGB_UNLABELLED: UNLABELLED,
    **{exp: LOGIT_UNLABELLED for exp in (RGB_LOGIT_UNLABELLED, LOGIT_ONLY_UNLABELLED, *RECIPE_WITHOUT,
                                        *BASELINES_UNLABELLED, RECIPE_PLUS_FITNETS, RECIPE_DECOMPOSED)},
}
#: the students that distil from other teachers than the RGB+flow+pose one (of the same
#: seed): {student: {teacher name in the student's config: teacher experiment, or the list
#: of fold-teacher experiments of a cross-fitted teacher}}
TEACHER_OF: dict[str, dict[str, str | list[str]]] = {
    "ablations/synthetic_kd_flowpose_teacher": {"teacher": FLOWPOSE_TEACHER},
    TWO_TEACHERS: {"flow": FLOW_TEACHER, "pose": POSE_TEACHER},
    "ablations/synthetic_kd_two_teachers_share1": {"flow": FLOW_TEACHER, "pose": POSE_TEACHER},
    "ablations/synthetic_kd_pose_teacher": {"teacher": POSE_TEACHER},
    "ablations/synthetic_kd_late_teacher": {"teacher": LATE_TEACHER},
    "ablations/synthetic_kd_late_teacher_init": {"teacher": LATE_TEACHER},
    "ablations/synthetic_kd_rgb_teacher": {"teacher": RGB_TEACHER},
    "ablations/synthetic_fitnets_decomposed_rgb_teacher": {"teacher": RGB_TEACHER},
    "ablations/synthetic_fitnets_decomposed_detached_rgb_teacher": {"teacher": RGB_TEACHER},
    "ablations/synthetic_kd_rgb_and_full_teachers": {"teacher": TEACHER, "rgb": RGB_TEACHER},
    "ablations/synthetic_kd_teacher_ensemble": {"teacher": TEACHER, "second": SECOND_TEACHER},
    "ablations/synthetic_kd_moddrop_teacher": {"teacher": MODDROP_TEACHER},
    "ablations/synthetic_kd_no_input_dropout_teacher": {"teacher": NO_DROPOUT_TEACHER},
    CROSS_FITTED: {"teacher": fold_teachers(TEACHER)},
    RGB_CROSS_FITTED: {"teacher": fold_teachers(RGB_TEACHER)},
    LOGIT_CROSS_FITTED: {"teacher": fold_teachers(TEACHER)},
    RGB_LOGIT_CROSS_FITTED: {"teacher": fold_teachers(RGB_TEACHER)},
    RGB_UNLABELLED: {"teacher": RGB_TEACHER},
    RGB_LOGIT_UNLABELLED: {"teacher": RGB_TEACHER},
}


def teacher_experiments(exp: str) -> list[str]:
    """Every teacher experiment student ``exp`` of :data:`TEACHER_OF` needs (fold teachers flattened)."""
    out: list[str] = []
    for spec in TEACHER_OF.get(exp, {}).values():
        out.extend(spec if isinstance(spec, list) else [spec])
    return out


#: teachers trained with ``--seed_everything`` = seed + offset (their run directory keeps
#: ``seed<s>``): the RGB-only teacher of seed s is another RGB-only run, which shares neither
#: initialisation nor batch order with its student, nor with the RGB-only row it is paired against
SEED_OFFSET: dict[str, int] = {RGB_TEACHER: 100, **{f: 100 for f in fold_teachers(RGB_TEACHER)}, SECOND_TEACHER: 200}
#: every teacher experiment: trained first, and not students themselves
TEACHERS = (TEACHER, FLOWPOSE_TEACHER, FLOW_TEACHER, POSE_TEACHER, LATE_TEACHER, RGB_TEACHER, MODDROP_TEACHER,
            NO_DROPOUT_TEACHER, SECOND_TEACHER, *fold_teachers(TEACHER), *fold_teachers(RGB_TEACHER))
MAIN = (RGB, TEACHER, OURS, CEILING)
ROWS: list[tuple[str, str, str]] = [
    # (label, experiment, group)
    ("RGB only", RGB, "reference"),
    ("Teacher (RGB+flow+pose)", TEACHER, "reference"),
    ("RGB ceiling (4× labelled training videos)", CEILING, "reference"),
    ("Linear probe (RGB, ±2 steps)", PROBE, "reference"),
    ("Linear probe (RGB, ±2 steps) taught by the teacher on the 432 unlabelled videos (a floor for the students "
     "that read them)", PROBE_TAUGHT, "reference"),
    ("Teacher without RGB (flow+pose)", FLOWPOSE_TEACHER, "teacher"),
    ("Teacher RGB+flow", FLOW_TEACHER, "teacher"),
    ("Teacher RGB+pose", POSE_TEACHER, "teacher"),
    ("Teacher RGB+flow+pose, late fusion", LATE_TEACHER, "teacher"),
    ("Teacher RGB only (the RGB-only recipe, training seed + 100)", RGB_TEACHER, "teacher"),
    ("Teacher RGB+flow+pose, trained again from seed + 200 (the ensemble's second member)", SECOND_TEACHER,
     "teacher"),
    ("Teacher RGB+flow+pose, ModDrop (flow, pose each dropped from half the training videos; no input dropout)",
     MODDROP_TEACHER, "teacher"),
    ("Teacher RGB+flow+pose without input dropout (the teacher until 2026-12-04)", NO_DROPOUT_TEACHER, "teacher"),
    ("Ours: atomic (same-video negatives) + global + boundary, weight: auto", OURS, "ours"),
    ("Ours with the previous defaults (λ = 0.1, batch negatives)", "ablations/synthetic_kd_previous_default",
     "ablation"),
    ("Ours, λ = 0.1 (hand-tuned on this world)", "ablations/synthetic_kd_weights01", "ablation"),
    ("Ours, λ = 1 (DESIGN's first reading)", "ablations/synthetic_kd_weights1", "ablation"),
    ("Ours, distillation stopped halfway (StopDistillation fraction 0.5; labels alone after)",
     "ablations/synthetic_kd_stop_half", "ablation"),
    ("Ours, distillation weights decaying linearly to 0 over the run (DistillationDecay)",
     "ablations/synthetic_kd_decay", "ablation"),
    ("Ours + all options (clean, centred, no false negatives)",
     "ablations/synthetic_kd_all_options", "ablation"),
    ("Ours, atomic negatives from the whole batch (the paper's)", "ablations/synthetic_kd_batch_negatives",
     "ablation"),
    ("Ours, atomic false negatives excluded", "ablations/synthetic_kd_no_false_negatives", "ablation"),
    ("Ours, losses on dropout-free student features (distill_from: clean)", "ablations/synthetic_kd_clean",
     "ablation"),
    ("Ours, per-video centring in global and boundary", "ablations/synthetic_kd_center", "ablation"),
    ("Ours, atoms of 8 steps (window 8)", "ablations/synthetic_kd_window8", "ablation"),
    ("Ours, auto_share 1 (each term at the full detection gradient)", "ablations/synthetic_kd_share1", "ablation"),
    ("Ours, boundary over strides 1, 2, 4", "ablations/synthetic_kd_boundary_strides124", "ablation"),
    ("Ours, boundary saliency standardised per video (scale: video)", "ablations/synthetic_kd_boundary_video_scale", "ablation"),
    ("Ours, from the teacher without RGB (flow+pose)", "ablations/synthetic_kd_flowpose_teacher", "ablation"),
    ("Ours, from two teachers, RGB+flow and RGB+pose (the paper's setup)", TWO_TEACHERS, "ablation"),
    ("Ours, two teachers, each teacher's losses at the one-teacher share (auto_share 1)",
     "ablations/synthetic_kd_two_teachers_share1", "ablation"),
    ("Ours, from the RGB+pose teacher alone", "ablations/synthetic_kd_pose_teacher", "ablation"),
    ("Ours + logit KD (the teacher's outputs too, weight: auto)", "ablations/synthetic_kd_plus_logit_kd", "ablation"),
    ("Ours + FitNets (weight: auto; FitNets beside the three losses)", "ablations/synthetic_kd_plus_fitnets",
     "ablation"),
    ("Ours, the student's head started from the teacher's (init_from: teacher)",
     "ablations/synthetic_kd_teacher_init", "ablation"),
    ("The teacher's head as the start, labels only (no distillation loss)",
     "ablations/synthetic_student_teacher_init", "ablation"),
    ("Ours, from the late-fusion teacher", "ablations/synthetic_kd_late_teacher", "ablation"),
    ("Ours, from the late-fusion teacher, started from its RGB stream (init_from: teacher)",
     "ablations/synthetic_kd_late_teacher_init", "ablation"),
    ("Ours, from an RGB-only teacher (self-distillation control)", "ablations/synthetic_kd_rgb_teacher", "ablation"),
    ("Ours, from the RGB+flow+pose and an RGB-only teacher together", "ablations/synthetic_kd_rgb_and_full_teachers",
     "ablation"),
    ("Ours, from an ensemble of two RGB+flow+pose teachers (seeds s and s + 200)",
     "ablations/synthetic_kd_teacher_ensemble", "ablation"),
    ("Ours, from the ModDrop teacher", "ablations/synthetic_kd_moddrop_teacher", "ablation"),
    ("Ours, from the teacher without input dropout (ours until 2026-12-04)",
     "ablations/synthetic_kd_no_input_dropout_teacher", "ablation"),
    ("Ours, from the cross-fitted teacher (4 fold teachers; each training video read by the one that never saw it)",
     CROSS_FITTED, "ablation"),
    ("Ours, from the cross-fitted RGB-only teacher (held-out self-distillation control)", RGB_CROSS_FITTED,
     "ablation"),
    ("Logit KD from the cross-fitted teacher (held-out logits on the labelled videos)", LOGIT_CROSS_FITTED,
     "ablation"),
    ("Logit KD from the cross-fitted RGB-only teacher (its control)", RGB_LOGIT_CROSS_FITTED, "ablation"),
    ("Ours with mixup across the batch's videos (α = 0.4; the teacher reads the mixed videos)",
     "ablations/synthetic_kd_mixup", "ablation"),
    ("RGB only with mixup (α = 0.4; the control of the row above)", RGB_MIXUP, "ablation"),
    ("Ours with the time stretch (each training video resampled at a speed in [1/1.5, 1.5]; the teacher reads "
     "the same videos)", "ablations/synthetic_kd_time_stretch", "ablation"),
    ("RGB only with the time stretch (the control of the row above)", RGB_TIME_STRETCH, "ablation"),
    ("Ours with a 5-step input projection (PDAN input_kernel: 5)", "ablations/synthetic_kd_input_kernel5",
     "ablation"),
    ("RGB only with a 5-step input projection (the control of the row above)", RGB_INPUT_KERNEL, "ablation"),
    ("Ours with the cosine learning-rate schedule (2 warm-up epochs)", "ablations/synthetic_kd_cosine", "ablation"),
    ("RGB only with the cosine schedule (the control of the row above)", RGB_COSINE, "ablation"),
    ("Ours, decomposed student (two PDAN branches, logits summed; the losses train one, Lee et al. 2023)",
     DECOMPOSED, "ablation"),
    ("RGB only, decomposed head (two PDAN branches; the control of the row above)", RGB_DECOMPOSED, "ablation"),
    ("FitNets (weight: auto) into a decomposed student's motion branch (modality hallucination)",
     "ablations/synthetic_fitnets_decomposed", "baseline"),
    ("FitNets into a decomposed student's motion branch, from an RGB-only teacher (control of the row above)",
     "ablations/synthetic_fitnets_decomposed_rgb_teacher", "baseline"),
    ("FitNets into a decomposed student's motion branch, which the detection loss does not reach (detach_motion)",
     "ablations/synthetic_fitnets_decomposed_detached", "baseline"),
    ("The same from an RGB-only teacher (control of the row above)",
     "ablations/synthetic_fitnets_decomposed_detached_rgb_teacher", "baseline"),
    ("Ours + 432 unlabelled videos (distillation losses only; the ceiling's extra videos without labels)",
     UNLABELLED, "ablation"),
    ("Ours + logit KD + 432 unlabelled videos", LOGIT_UNLABELLED, "ablation"),
    ("Ours + 432 unlabelled videos, from an RGB-only teacher (control of the first row above)", RGB_UNLABELLED,
     "ablation"),
    ("Ours + logit KD + 432 unlabelled videos, from an RGB-only teacher (control of the second row above: "
     "self-training)", RGB_LOGIT_UNLABELLED, "ablation"),
    ("Logit KD alone + 432 unlabelled videos (the second row without the three losses)", LOGIT_ONLY_UNLABELLED,
     "ablation"),
    *((f"Ours + logit KD + 432 unlabelled videos, without {exp.rsplit('_', 1)[1]}", exp, "ablation")
      for exp in RECIPE_WITHOUT),
    *((f"{name}, weight: auto + logit KD + 432 unlabelled videos (the second row with {name} for the three losses)",
       exp, "baseline") for name, exp in zip(BASELINE_NAMES.values(), BASELINES_UNLABELLED)),
    ("Ours + FitNets (weight: auto) + logit KD + 432 unlabelled videos (FitNets beside the three losses)",
     RECIPE_PLUS_FITNETS, "ablation"),
    ("Ours + logit KD + 432 unlabelled videos, decomposed student (the three losses into its motion branch)",
     RECIPE_DECOMPOSED, "ablation"),
    ("atomic only", "ablations/synthetic_only_atomic", "ablation"),
    ("global only", "ablations/synthetic_only_global", "ablation"),
    ("boundary only", "ablations/synthetic_only_boundary", "ablation"),
    ("without atomic", "ablations/synthetic_without_atomic", "ablation"),
    ("without global", "ablations/synthetic_without_global", "ablation"),
    ("without boundary", "ablations/synthetic_without_boundary", "ablation"),
    ("logit KD", "baselines/synthetic_logit_kd", "baseline"),
    ("FitNets", "baselines/synthetic_fitnets", "baseline"),
    ("MARS (feature MSE)", "baselines/synthetic_mars", "baseline"),
    ("attention transfer", "baselines/synthetic_at", "baseline"),
    ("similarity-preserving", "baselines/synthetic_sp", "baseline"),
    ("RKD", "baselines/synthetic_rkd", "baseline"),
    ("PKT", "baselines/synthetic_pkt", "baseline"),
    ("CRD", "baselines/synthetic_crd", "baseline"),
    ("logit KD, weight: auto", "baselines/synthetic_logit_kd_auto", "baseline"),
    ("FitNets, weight: auto", "baselines/synthetic_fitnets_auto", "baseline"),
    ("MARS (feature MSE), weight: auto", "baselines/synthetic_mars_auto", "baseline"),
    ("attention transfer, weight: auto", "baselines/synthetic_at_auto", "baseline"),
    ("similarity-preserving, weight: auto", "baselines/synthetic_sp_auto", "baseline"),
    ("RKD, weight: auto", "baselines/synthetic_rkd_auto", "baseline"),
    ("PKT, weight: auto", "baselines/synthetic_pkt_auto", "baseline"),
    ("CRD, weight: auto", "baselines/synthetic_crd_auto", "baseline"),
]
METRIC = "test/frame_map"
#: the validation figure every run's checkpoint is chosen on (RunCheckpoint's monitor)
SELECTION = "val/frame_map"
PROBE_FILE = "data/synthetic.h5"
UNLABELLED_FILE = "data/synthetic_unlabelled.h5"
#: the files the experiments read, with the generator options make compare's recipe uses
DATA_FILES = {"data/synthetic.h5": {}, "data/synthetic_ceiling.h5": {"extra_training": 432},
              "data/synthetic_unlabelled.h5": {"extra_training": 432, "extra_subset": "unlabelled"}}

#: two-sided 95 % quantiles of Student's t, t_{0.975, df}, df = 1..30 (then the normal 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t_interval(xs: list[float]) -> tuple[float, float] | None:
    """95 % interval of the mean of ``xs``: ``mean ± t_{0.975, n-1} · s / √n`` (None below 2 values)."""
    if len(xs) < 2:
        return None
    m, s = statistics.fmean(xs), statistics.stdev(xs)
    t = T975[len(xs) - 2] if len(xs) - 1 <= len(T975) else 1.96
    half = t * s / len(xs) ** 0.5
    return m - half, m + half


def run_dir(root: Path, seed: int, exp: str, reference: Path | None = None) -> Path:
    """Where run ``exp`` of ``seed`` lives: the references (RGB-only, teacher) under
    ``reference`` when given, everything else under ``root``."""
    if reference is not None and exp in REFERENCES:
        root = reference
    return root / f"seed{seed}" / exp


def check_data(files: dict[str, dict] = DATA_FILES) -> None:
    """Stop (one line, :class:`UsageError`) before any fit when a benchmark file exists but is
    not what the Makefile makes -- an earlier calibration or other options would mix worlds
    in one table. A missing file is left to the fit that opens it."""
    from kd_detect.lab.runner import synthetic_difference

    for name, options in files.items():
        why = synthetic_difference(Path(name), options) if Path(name).is_file() else None
        if why:
            raise UsageError(f"{name} is not the synthetic benchmark the comparison expects: {why}. "
                             f"Delete it and rerun `make compare`, which regenerates it")


def order_mismatch(out: Path, seed: int, extra: list[str]) -> str | None:
    """Why the finished run ``out`` cannot join a comparison that trains seed ``seed`` with
    the overrides ``extra``: its training videos came in another order
    (:func:`kd_detect.lab.runner.order_difference`). ``None`` when the order is the one
    asked for, or not recorded."""
    from kd_detect.lab.runner import order_difference

    recorded = RunDir(out).config()
    given = [a.split("=", 1)[1] for a in extra if a.startswith("--data.seed=")]
    data_seed = int(given[-1]) if given and given[-1].lstrip("-").isdigit() else None  # the last override wins
    why = order_difference({"seed_everything": seed, "data": {"seed": data_seed}}, recorded) if recorded else None
    if why is None:
        return None
    return (f"{out}: {why}: delete the run to retrain it, or add `-- --data.seed={training_order_seed(recorded)}` "
            "to compare every run in that one order")


def order_mismatches(root: Path, extra: list[str]) -> str | None:
    """:func:`order_mismatch` for every finished run under ``root`` (the first found), not
    only those this invocation would reuse: the report reads every seed there, so seeds
    added with ``--first-seed`` beside runs of the old single order would mix the two."""
    experiments = dict.fromkeys([e for _, e, _ in ROWS] + [t for e in TEACHER_OF for t in teacher_experiments(e)])
    for seed_dir in sorted(root.glob("seed*")):
        suffix = seed_dir.name[len("seed"):]
        if not suffix.isdigit():
            continue
        for exp in experiments:
            out = seed_dir / exp
            if (out / "metrics.json").is_file():
                why = order_mismatch(out, int(suffix) + SEED_OFFSET.get(exp, 0), extra)
                if why:
                    return why
    return None


def fit(exp: str, seed: int, root: Path, extra: list[str], log: Path, reference: Path | None = None) -> dict:
    out = run_dir(root, seed, exp, reference)
    metrics = out / "metrics.json"
    if metrics.is_file():
        stale = order_mismatch(out, seed + SEED_OFFSET.get(exp, 0), extra)
        if stale:
            raise UsageError(stale)
        return json.loads(metrics.read_text())
    cmd = [
        str(Path(sys.executable).with_name("kd-detect")), "fit", "--config", f"experiments/{exp}.yaml",
        f"--seed_everything={seed + SEED_OFFSET.get(exp, 0)}", f"--trainer.default_root_dir={out}", "--test_after_fit=true",
        "--trainer.enable_progress_bar=false", "--trainer.logger=kd_detect.loggers.CSVLogger", *extra,
    ]
    if exp not in REFERENCES and exp not in TEACHERS and exp not in LABELS_ONLY:
        for name, teacher in TEACHER_OF.get(exp, {"teacher": TEACHER}).items():
            if isinstance(teacher, list):  # cross-fitted: the fold teachers' checkpoints, in fold order
                ckpts = ", ".join(str(run_dir(root, seed, t, reference) / "best.ckpt") for t in teacher)
                cmd.append(f"--model.init_args.teachers.{name}=[{ckpts}]")
            else:
                cmd.append(f"--model.init_args.teachers.{name}={run_dir(root, seed, teacher, reference) / 'best.ckpt'}")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not metrics.is_file():
        raise RuntimeError(f"run {exp} (seed {seed}) failed; see {log}")
    print(f"  done: {exp} seed {seed}: {METRIC} = {json.loads(metrics.read_text())[METRIC]:.4f}", flush=True)
    return json.loads(metrics.read_text())


def collect(root: Path, reference: Path | None = None, validation: bool = False) -> dict[str, dict[int, float]]:
    """Test figure of every finished run ``root/seed<s>/<exp>/metrics.json``, per experiment
    and seed (the RGB-only and teacher rows from ``reference`` when given, for the seeds of
    ``root``). With ``validation``, the validation figure each run's checkpoint was chosen on
    instead (no probe row; a run that did not record it is left out)."""
    results: dict[str, dict[int, float]] = {exp: {} for _, exp, _ in ROWS}
    for seed_dir in sorted(root.glob("seed*")):
        seed = int(seed_dir.name[len("seed"):])
        for _, exp, _ in ROWS:
            if exp == PROBE:
                continue
            run = RunDir(run_dir(root, seed, exp, reference))
            metrics = run.metrics()
            if metrics is None:
                continue
            if not validation:
                results[exp][seed] = metrics[METRIC]
            elif (score := run.selection_score(SELECTION)) is not None:
                results[exp][seed] = score
    if validation:
        return results
    probe_json = (reference or root) / "probe.json"
    if probe_json.is_file():  # deterministic: the same value paired with every seed's RGB run
        value = json.loads(probe_json.read_text())[METRIC]
        results[PROBE] = {s: value for s in results[RGB]} or {0: value}
    return results


def run_probe(root: Path, path: str = PROBE_FILE) -> float:
    """The linear-probe row (``root/probe.json``; computed once)."""
    out = root / "probe.json"
    if out.is_file():
        return json.loads(out.read_text())[METRIC]
    from kd_detect.lab.probe import probe

    result = probe(path, ["rgb"], context=2)
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps({METRIC: result.test_map, "val/frame_map": result.val_map, "file": path,
                                   "modalities": ["rgb"], "context": 2}, indent=2))
    print(f"  done: linear probe (rgb, ±2): {METRIC} = {result.test_map:.4f}", flush=True)
    return result.test_map


def run_probe_taught(root: Path, seed: int, teacher_ckpt: Path, path: str = UNLABELLED_FILE) -> float:
    """The row "linear probe taught by the teacher" of ``seed`` (``root/seed<s>/probe_taught/
    metrics.json``, read like a run's; computed once): the RGB probe fit to the labels and to
    the probabilities of ``teacher_ckpt`` on the videos of subset ``unlabelled`` of ``path``."""
    out = root / f"seed{seed}" / PROBE_TAUGHT / "metrics.json"
    if out.is_file():
        return json.loads(out.read_text())[METRIC]
    from kd_detect.lab.probe import probe, teacher_targets

    result = probe(path, ["rgb"], context=2, extra_subset="unlabelled", extra_targets=teacher_targets(teacher_ckpt, path))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps({METRIC: result.test_map, "selection": {"monitor": SELECTION, "score": result.val_map},
                                   "file": path, "teacher": str(teacher_ckpt), "unlabelled_videos": result.extra_videos,
                                   "modalities": ["rgb"], "context": 2}, indent=2))
    print(f"  done: linear probe taught by the teacher, seed {seed}: {METRIC} = {result.test_map:.4f}", flush=True)
    return result.test_map


def summarise(results: dict[str, dict[int, float]], validation: dict[str, dict[int, float]] | None = None) -> list[dict]:
    """One row per experiment with runs: mean ± std over seeds, the share of the teacher–RGB
    gap closed (from the means over the seeds the row shares with both references), and the
    difference to RGB-only paired by seed (the same
    data, teacher and seed on both sides, so most of the seed-to-seed spread cancels).
    Ablations and baselines also get ours − row, on test and (from ``validation``, the
    figures the checkpoints were chosen on) on validation, so a choice that only one split
    supports shows as such."""

    def mean(xs: list[float]) -> float:
        return statistics.fmean(xs) if xs else float("nan")

    def std(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    rgb_runs = results.get(RGB, {})

    def closed(runs: dict[int, float], top: str, exp: str) -> float | None:
        """(row − RGB) / (top − RGB), each a mean over the seeds the three share: with the
        references' means over all their seeds, a row of fewer seeds (the ablations') would
        be set against other seeds' RGB-only and teacher."""
        if exp in (RGB, CEILING, PROBE) or exp in TEACHERS:
            return None
        tops = results.get(top, {})
        common = [s for s in sorted(runs) if s in rgb_runs and s in tops]
        if not common:
            return None
        lead = mean([tops[s] - rgb_runs[s] for s in common])
        return None if lead == 0 else mean([runs[s] - rgb_runs[s] for s in common]) / lead

    rows = []
    for label, exp, group in ROWS:
        runs = results.get(exp, {})
        if not runs:
            continue
        xs = [runs[s] for s in sorted(runs)]
        m = mean(xs)
        row = {
            "name": label, "experiment": exp, "group": group, "runs": len(xs),
            "mean": m, "std": std(xs),
            "gap_closed": closed(runs, TEACHER, exp),
            "gap_closed_ceiling": closed(runs, CEILING, exp),
            "values": xs, "seeds": sorted(runs),
            "paired": None,
        }
        if exp != RGB:
            row["paired"] = paired_difference(runs, rgb_runs)
        if group in ("ablation", "baseline"):  # ours − row: for "without X", the leave-one-out cost of X
            ours = VERSUS.get(exp, OURS)
            row["versus"] = ours
            row["ours_minus_row"] = paired_difference(results.get(ours, {}), runs)
            if validation is not None:
                row["ours_minus_row_val"] = paired_difference(validation.get(ours, {}), validation.get(exp, {}))
        rows.append(row)
    return rows


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """``a − b`` over the seeds both have: mean, std, 95 % t interval, and on how many
    seeds ``a`` is above (``None`` without a common seed)."""
    diffs = [a[s] - b[s] for s in sorted(a) if s in b]
    if not diffs:
        return None
    return {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            "runs": len(diffs), "above": sum(d > 0 for d in diffs), "ci95": t_interval(diffs)}


def seeds_found(rows: list[dict]) -> list[int]:
    """Every seed the rows count (runs of earlier invocations under the same output directory too)."""
    return sorted({s for r in rows for s in r.get("seeds", [])})


def seeds_note(rows: list[dict], seeds: list[int]) -> str:
    """Say so when the rows count seeds the command did not run (an earlier invocation's)."""
    found = seeds_found(rows)
    extra = [s for s in found if s not in seeds]
    return f"; the rows count every seed found under its output directory: {', '.join(map(str, found))}" if extra else ""


def markdown(rows: list[dict], seeds: list[int], extra: list[str], command: str | None = None) -> str:
    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:+.0f}%"

    lines = [
        "# Synthetic benchmark: RGB-only vs teacher vs cross-modal KD",
        "",
        "Test frame mAP (%, mean ± std over the row's runs, one per seed); gap closed = (row − RGB) / "
        "(teacher − RGB) and (row − RGB) / (RGB ceiling − RGB), from the means over the seeds the row shares with "
        "both; Δ RGB = row − RGB-only of the "
        "same seed, mean ± std over seeds, with its 95 % t interval, and on how many seeds the row is above "
        "RGB-only. The linear probe is deterministic (one value, paired with every seed's RGB-only run).",
        f"Command: `{command or f'make compare SEEDS={len(seeds)}'}`" + (f" (extra args: `{' '.join(extra)}`)" if extra else "")
        + seeds_note(rows, seeds),
        "",
        "| method | group | runs | test frame mAP | gap closed: teacher | gap closed: RGB ceiling "
        "| Δ RGB (paired) | 95 % CI | above RGB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r.get("paired")
        delta = "" if p is None else f"{100 * p['mean']:+.2f} ± {100 * p['std']:.2f}"
        ci = "" if p is None or not p.get("ci95") else f"[{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]"
        above = "" if p is None else f"{p['above']}/{p['runs']}"
        lines.append(f"| {r['name']} | {r['group']} | {r['runs']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} "
                     f"| {pct(r['gap_closed'])} | {pct(r.get('gap_closed_ceiling'))} | {delta} | {ci} | {above} |")
    versus = [r for r in rows if r.get("ours_minus_row")]
    if versus:
        lines += [
            "",
            "Ours against each ablation and baseline, paired by seed (ours − row; for a \"without X\" row, the "
            "leave-one-out cost of X: positive when X helps). The last two columns pair the validation figures "
            "each run's checkpoint was chosen on; where they disagree in sign with the test split, the two splits "
            "(36 and 60 videos on the synthetic benchmark) do not agree on the choice. \"Ours\" is the row named "
            "in the second column: the labelled-only student, or for a variant of a semi-supervised row that row:",
            "",
            "| row | ours = | group | seeds | ours − row | 95 % CI | ours above | validation: ours − row | ours above |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        label_of = {exp: label for label, exp, _ in ROWS}
        for r in versus:
            p, v = r["ours_minus_row"], r.get("ours_minus_row_val")
            ci = "" if not p.get("ci95") else f"[{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]"
            val = ("| | |" if not v else f"| {100 * v['mean']:+.2f} | {v['above']}/{v['runs']} |")
            against = "ours" if r["versus"] == OURS else label_of[r["versus"]]
            lines.append(f"| {r['name']} | {against} | {r['group']} | {p['runs']} "
                         f"| {100 * p['mean']:+.2f} ± {100 * p['std']:.2f} | {ci} | {p['above']}/{p['runs']} {val}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make compare", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of RGB-only, teacher, ours and the RGB ceiling")
    parser.add_argument("--ablation-seeds", type=int, default=3, help="seeds of the ablations and baselines")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed: seeds are FIRST .. FIRST+N-1 (to add seeds to a comparison elsewhere)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each single-threaded)")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--only", nargs="*", default=None,
                        help="experiments to run (default: every row); the references every row is paired with "
                             "(RGB-only, teacher, RGB ceiling) run too unless --reference gives them")
    parser.add_argument("--reference", default=None,
                        help="take the RGB-only and teacher runs from this compare directory (e.g. runs/compare)")
    parser.add_argument("--probe-file", default=None,
                        help=f"feature file of the linear-probe row (default {PROBE_FILE}; for another world "
                             "given with --data.path, that world's file: without it the row is left out)")
    parser.add_argument("--unlabelled-data", default=None,
                        help="feature file of the rows with unlabelled videos, for another world given with "
                             "--data.path (that world's file plus its subset 'unlabelled'); without it those rows "
                             "read data/synthetic_unlabelled.h5, and are left out when --data.path is given")
    parser.add_argument("--ceiling-data", default=None,
                        help="feature file of the RGB ceiling for another world given with --data.path (that "
                             "world's file with 4x the labelled training videos, e.g. python -m data_prep.synthetic "
                             "--seed N --extra-training 432); without it the ceiling reads data/synthetic_ceiling.h5, "
                             "and is left out when --data.path is given")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0, got {args.first_seed}")
    if not any(a.startswith("--data.path") for a in args.extra):  # a user's own file is theirs to vouch for
        try:
            check_data()
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    root = Path(args.out)
    reference = Path(args.reference) if args.reference else None
    mixed = order_mismatches(root, args.extra)  # the report reads every seed under --out
    if mixed:
        print(f"error: {mixed}", file=sys.stderr)
        return 1
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    side_seeds = seeds[: args.ablation_seeds]
    chosen = [exp for _, exp, _ in ROWS
              if exp not in COMPUTED and (args.only is None or exp in args.only or exp in REFERENCES)]
    other_world = any(a.startswith("--data.path") for a in args.extra)
    # the rows with a feature file of their own, and the file given for it (None: the default world's)
    own_file = {**{exp: args.unlabelled_data for exp in UNLABELLED_ROWS}, CEILING: args.ceiling_data}
    if other_world:  # a row whose own file is not given would read the default world's: left out
        chosen = [exp for exp in chosen if exp not in own_file or own_file[exp]]

    def extra_of(exp: str) -> list[str]:  # a row with its own file reads it (the last --data.path wins)
        return [*args.extra, *([f"--data.path={own_file[exp]}"] if own_file.get(exp) else [])]

    chosen += list(dict.fromkeys(t for exp in chosen for t in teacher_experiments(exp) if t not in chosen))
    run_seeds = {exp: seeds if exp in MAIN else side_seeds for exp in chosen}
    for exp in TEACHER_OF:  # a teacher runs on the seeds of its students
        for teacher in teacher_experiments(exp):
            if exp in chosen and teacher not in MAIN:
                run_seeds[teacher] = sorted(set(run_seeds.get(teacher, [])) | set(run_seeds[exp]))
    log = root / "compare.log"
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # teachers (and the RGB baseline) first: every student of seed s needs teacher s
        first = {(exp, s): pool.submit(fit, exp, s, root, extra_of(exp), log, reference)
                 for exp in (*TEACHERS, RGB, CEILING) if exp in chosen for s in run_seeds[exp]}
        for (exp, _), fut in first.items():
            if exp in TEACHERS:
                fut.result()
        rest = {(exp, s): pool.submit(fit, exp, s, root, extra_of(exp), log, reference)
                for exp in chosen if exp not in REFERENCES and exp not in TEACHERS for s in run_seeds[exp]}
        for fut in {**first, **rest}.values():
            fut.result()  # re-raise a failed run
    if (args.only is None or PROBE in args.only) and (args.probe_file or not other_world):
        run_probe(reference or root, args.probe_file or PROBE_FILE)
    if (args.only is None or PROBE_TAUGHT in args.only) and (args.unlabelled_data or not other_world):
        for s in seeds:  # each seed's teacher (a reference: trained above)
            run_probe_taught(root, s, run_dir(root, s, TEACHER, reference) / "best.ckpt",
                             args.unlabelled_data or UNLABELLED_FILE)
    # the report covers every finished run under the output directory (all seeds, also
    # those of earlier invocations with other --seeds/--only), each row saying its count
    for s in seeds:  # the seed directory marks the seeds of this comparison (collect)
        (root / f"seed{s}").mkdir(parents=True, exist_ok=True)
    results = collect(root, reference)
    rows = summarise(results, collect(root, reference, validation=True))
    command = None
    if args.out != "runs/compare" or reference is not None or args.only is not None or args.first_seed:
        command = " ".join(["python -m kd_detect.lab.compare", f"--seeds {args.seeds}",
                            f"--ablation-seeds {args.ablation_seeds}", f"--out {args.out}"]
                           + ([f"--first-seed {args.first_seed}"] if args.first_seed else [])
                           + ([f"--reference {args.reference}"] if reference else [])
                           + ([f"--unlabelled-data {args.unlabelled_data}"] if args.unlabelled_data else [])
                           + ([f"--ceiling-data {args.ceiling_data}"] if args.ceiling_data else [])
                           + ([f"--probe-file {args.probe_file}"] if args.probe_file else [])
                           + (["--only", *args.only] if args.only is not None else []))
    report = markdown(rows, seeds, args.extra, command)
    with atomic_write(root / "report.md") as tmp:
        tmp.write_text(report)
    with atomic_write(root / "report.json") as tmp:
        # "seeds": every seed the rows count (earlier invocations' included); "seeds_run": this one's
        tmp.write_text(json.dumps({"seeds": seeds_found(rows), "seeds_run": seeds, "metric": METRIC, "rows": rows}, indent=2))
    compare_bar_chart([{"name": r["name"], "mean": r["mean"], "std": r["std"]} for r in rows], root / "compare.png")
    print(report)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
