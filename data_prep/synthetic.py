"""Synthetic multi-modal action-detection benchmark (the embedded default, DESIGN.md §6).

``python -m data_prep.synthetic --out data/synthetic.h5 [--preset v2|v1] [--seed 0] [options]``
or :func:`generate`. Deterministic per seed (same seed and options, same bytes: video ``i``
is drawn from its own generator seeded with ``(seed, i, ...)``), written through the
format-v1 atomic writer (DESIGN.md §4) with subsets ``training`` / ``validation`` /
``testing`` (~60/15/25 by default): model selection (best checkpoint, LR plateaus)
happens on ``validation`` so the test figures are not chosen on the test set.

Two worlds (``--preset``): **v2**, the default, described first, and **v1**, the first
benchmark, kept for regression (it reproduces that generator's files bit for bit).
``--preset v2.0`` is v2's first calibration (below), kept to reproduce earlier figures.
``--preset views`` is v2 seen from 3 viewpoints, where RGB's class evidence is not linear
(below, "Viewpoints").

Benchmark v2 (the default)
--------------------------
What it imitates: Charades / TSU with I3D features, where RGB alone is a decent
detector, the RGB+flow(+pose) model is better by a *modest* margin (Charades: I3D RGB
~20 vs RGB+flow ~23 frame mAP in the papers, a relative gain of ~15 %; TSU similar),
and the extra modalities carry knowledge that the labels do not name. Each choice and
its real-data reason:

* **Actions are sequences of sub-action phases ("atoms").** ``phases`` (10) shared
  phases; a class is a sequence of ``min_phases``-``max_phases`` (2-4) of them, each with
  its own mean share of the action (drawn per class), and every instance draws its own
  shares around the class's (``Dirichlet(phase_spread * n * share)``). *Real:* "drink
  from a cup" is reach, grasp, lift, tilt, put down; "pour into a cup" shares reach and
  grasp (the atomic level of Dai et al.). No two classes have the same set of phases
  (while the pool has enough combinations).
* **Labels name the action only, never its phases.** The file's labels/segments are
  per class; the phase structure is stored in root attrs (``class_phases``, ``-1``
  padded) for analysis only. *Real:* Charades and TSU annotate activities, not atoms.
* **A long tail, and rare classes reuse the phases of frequent ones.** Class frequency
  ``~ (rank + 1)^-tail`` (``tail`` 1: with 14 classes the head is 14x the tail, class
  ranks shuffled); the more frequent half draws its phases from all phases, the rarer
  half only from the phases the frequent half uses. *Real:* Charades' classes range over
  two orders of magnitude in frequency and the rare ones are made of common motions
  (the object or the order differs), so a model that knows the motions from frequent
  classes has a head start on rare ones -- knowledge a teacher can pass on.
* **Flow and pose show the phases sharply.** Flow is ``sum_p strength_p * a_p(t) * u_p``
  (``a_p`` the phase's activity, the instance's intensity in ``[0.6, 1.4]`` while the
  phase runs, 0 otherwise; ``u_p`` a unit direction per phase; ``strength_p`` in
  ``[0.5, 1.2]``), plus a boundary spike on the first and last step of each instance
  along a shared direction (``boundary_amp``), a camera-motion AR(1) drift
  (``flow_drift``) and white noise (``flow_noise``). Pose shows the phases in which the
  person moves (``p % 3 != 2``) along their own directions, plus noise (``pose_noise``);
  15 % of videos have a tracking-dropout span. Neither shows what object is used: flow
  alone is ambiguous between classes that share phases. *Real:* flow/pose streams are
  motion detectors with little appearance; flow-only I3D is weaker than RGB on Charades.
* **RGB shows a static class appearance plus a weak, blurred copy of the motion.** RGB
  is ``rgb_amp * sum_instances blur(presence) * (appearance_c + appearance_var * v)``
  (the class's unit appearance and a per-instance variation ``v``, a random unit vector:
  the cup of this video) ``+ rgb_motion * blur_{motion_blur}(flow signal) M`` (``M`` a
  fixed isometry from flow to RGB dimensions) + a static per-video scene vector
  (``scene``) + a slow AR(1) drift (``drift``) + white noise (``rgb_noise``). The
  appearance is blurred by ``blur`` steps, so boundaries are vague. ``C // 4``
  *confusable pairs* (a frequent class and a rare one) share most of their appearance
  (``confusion``, as in v1) but not their phases: RGB tells them apart mainly through
  its weak motion copy, flow and pose through the phases. *Real:* I3D RGB sees motion
  (it is a 3-D conv over frames), but blurred and weaker than the flow stream; scene and
  drift are nuisances the teacher's own RGB stream shares.
* **Viewpoints (``views``, 1 by default; today's files are one-view).** With ``views``
  V > 1 every class has V unrelated unit appearances (confusable pairs as close in each),
  and each video shows all its instances from one of them, drawn per video. Flow, pose,
  labels and segments are those of the one-view world, video by video. *Real:* Charades
  was filmed by hundreds of people in their own homes, one camera per video, so an action's
  I3D appearance falls into several clusters (viewpoint, room, object) that one linear
  template reads poorly, one reason temporal heads with hidden units (PDAN, MS-TCN) beat a
  per-frame linear classifier of the same features; with one view a linear window is close
  to the best reader (below). Motion seen as flow and pose changes less with the viewpoint.
  ``--preset views`` is ``views`` 3 with ``rgb_amp`` 2.0, calibrated like revision 2 and
  before any student was trained on it: among ``rgb_amp`` 1.4 and 2.0 (training seed 0,
  test frame mAP: RGB probe 53.0 / 63.4, RGB PDAN 58.7 / 67.3, teacher 72.2 / 78.4), 2.0
  gives the Charades-sized teacher lead (+16 %) with PDAN above the linear probe of RGB.
* **Realistic training annotations by default** (``training`` subset only): each
  instance is unannotated with probability ``label_drop`` (0.15) and each annotated
  boundary moves by ``U(-j, j) * length``, ``j = label_jitter`` (0.2); the features
  follow the true actions and ``validation`` / ``testing`` labels are exact. *Real:*
  crowd-sourced Charades training labels miss instances and disagree on boundaries
  (inter-annotator boundary agreement is low), whereas evaluation wants exact labels.
* **Size** as v1 (240 videos of 64-192 steps, 14 classes, 64/32/32 dims) so that
  ``make train`` stays within ~10 minutes on 2 cores.

**Calibration (revision 2, the ``generator_revision`` attr of every file).** The first
calibration of v2 (``--preset v2.0``: RGB appearance ``rgb_amp`` 1.0, RGB motion
``rgb_motion`` 0.4) gave the teacher a +22 % lead over RGB with the first, under-regularised
PDAN recipe, but only ~5 % once the RGB recipe was tuned on validation (issue 13 B) --
less than real data's. Revision 2 weakens RGB's own evidence (``rgb_amp`` 0.8: a smaller,
more cluttered object relative to the scene; ``rgb_motion`` 0.3) and changes nothing else.
It was chosen on the teacher's lead alone, with the tuned recipe (but a teacher that, by a
bug fixed on 2026-12-04, trained without the recipe's input dropout; with it the teacher's
PDAN lead is about +32 %, README, Results), between two candidates
(PDAN, training seed 0, test frame mAP: ``rgb_amp`` 0.7 / ``rgb_motion`` 0.25 gave RGB
45.8, teacher 58.6, +28 %; 0.8 / 0.3 gave 54.1 and 62.2, +15 %, the Charades-sized
lead), not on what distillation did on them.

Measured on revision 2, test frame mAP, linear probe (``python -m kd_detect.lab.probe FILE
--modalities ...``, ridge, ±2 steps), generator seed 0: RGB 61.76, flow 21.54, flow+pose
30.73, RGB+flow+pose 72.39 (+17 % relative; generator seeds 1 and 2: +15 %, +12 %); the RGB
probe on the ceiling file (4x the training videos) 68.25. The PDAN figures of the
tuned recipe (RGB, teacher, RGB ceiling, over 5 seeds) are in the README, Results.
RGB-only PDAN scores below the linear probe of its own input; the teacher did too until it
trained with the recipe's input dropout (2026-12-04), and is now level with its probe. The world
is linear-Gaussian in the phase and class activity, so a short linear window is close to
the best reader, and with 144 noisily labelled training videos a head of ~300k parameters
pays in variance for capacity it does not need (the probe itself gains 6.5 points from 4x
the videos). Real I3D features are not linear in the action, so this gap is a property
of the generator, not a forecast for real data.

Benchmark v1 (``--preset v1``)
------------------------------
Constant-intensity boxes, RGB blind to motion, exact labels. Kept bit for bit for
regression; the review of issue 13 found it leaves little to distil (flow and pose are
fixed functions of the labels).

* **Videos.** ``T ~ U[min_steps, max_steps]`` steps of ``step_seconds`` each
  (``duration = T * step_seconds``). Each video is untrimmed: ``1 + Poisson(T / 40)``
  action instances placed at random, so several actions overlap (multi-label) and some
  steps are background. Classes follow a mild long-tailed prior; instance lengths are
  log-uniform in ``[4, 64]`` steps (clipped by the video ends). Segments are stored in
  seconds; labels follow the strict rule ``start < t_i < end`` (DESIGN.md §4) and the
  activity that drives the features is exactly those labels, times a per-instance
  intensity in ``[0.6, 1.4]``. (v2 shares all of this except the class prior, the
  ``[8, 64]`` instance lengths and what the activity drives.)
* **Classes.** Every class has a latent prototype per modality (random unit directions).
  ``C // 4`` *confusable pairs* ``(2k, 2k+1)`` share most of their RGB prototype: the
  second is ``sqrt(1 - e^2) * p_first + e * u`` with ``e = confusion`` (default 0.35), so
  RGB holds only a weak cue telling them apart; their flow prototypes are unrelated.
  Classes with ``c % 3 != 2`` are *person-centric* (about two thirds): only they show
  up in pose.
* **RGB** (``rgb_dim``): ``sum_c blur(activity_c) * rgb_amp * p_rgb[c]`` + a static
  per-video scene vector (norm ~``scene``) + a slow AR(1) drift (rho 0.95, norm ~``drift``)
  + white noise (``rgb_noise``, the std of its projection on any unit direction). The
  class evidence is blurred in time by a Gaussian of ``blur`` steps; ``rgb_motion`` (0 in
  v1) adds the flow stream's sharp motion signal through a fixed projection.
* **Flow** (``flow_dim``): sharp (unblurred) activity times a class-specific motion
  strength in ``[0.3, 1.2]`` along the class's flow prototype, a class-independent
  boundary spike (``boundary_amp``), camera-motion AR(1) drift (``flow_drift``) and
  noise (``flow_noise``). It separates the confusable pairs and marks boundaries.
* **Pose** (``pose_dim``): person-centric classes' sharp activity along their pose
  prototypes plus noise (``pose_noise``); a few videos have a tracking-dropout span.
* **Annotation noise** (off in v1; ``training`` subset only): as in v2. The noise is
  drawn from its own generator, so every other array is the same as without it.

``data_prep/synthetic_check.py`` trains a small temporal conv net per modality set.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep._common import interrupted
from data_prep._synthetic_worlds import (  # noqa: F401 (re-exported: tests and synthetic_check use them)
    World,
    _annotation_noise,
    _ar1,
    _blur,
    _Prototypes,
    _prototypes,
    _unit,
    _video,
    _video_v2,
    confusable_pairs,
    person_classes,
    person_phases,
    world_v2,
)
from kd_detect.data.format import UNLABELLED, FeatureFileWriter, VideoRecord
from kd_detect.errors import KdDetectError
from kd_detect.io import ensure_writable_file, raise_pending_signal

TRAINING = "training"
VALIDATION = "validation"
TESTING = "testing"

#: A tiny preset for tests and smoke runs (16 videos, 6 classes, T 24-64, small dims; v2:
#: 6 phases, so that their directions fit the 8 flow dimensions).
TINY = dict(videos=16, classes=6, min_steps=24, max_steps=64, rgb_dim=16, flow_dim=8, pose_dim=8, phases=6)


#: What each option means (``--help`` prints these with the defaults).
HELP = {
    "world": "generative model: 'v2' (phased actions, weak RGB motion) or 'v1' (constant boxes)",
    "videos": "number of videos",
    "classes": "number of action classes",
    "min_steps": "shortest video, in feature steps",
    "max_steps": "longest video, in feature steps",
    "rgb_dim": "RGB feature dimension",
    "flow_dim": "flow feature dimension",
    "pose_dim": "pose feature dimension",
    "step_seconds": "seconds per feature step",
    "test_fraction": "share of videos in the testing subset",
    "val_fraction": "share of videos in the validation subset",
    "rgb_amp": "amplitude of the class appearance in RGB",
    "rgb_noise": "RGB white noise (std along any unit direction x sqrt(dim))",
    "blur": "std (steps) of the Gaussian blur of the class evidence in RGB",
    "confusion": "weight of a confusable pair's own RGB cue (0: identical appearance, 1: unrelated)",
    "scene": "norm of the static per-video RGB scene vector",
    "drift": "norm of the slow AR(1) RGB drift",
    "flow_amp": "amplitude of the motion signal in flow",
    "flow_noise": "flow white noise",
    "flow_drift": "norm of the camera-motion AR(1) drift in flow",
    "boundary_amp": "amplitude of the instance-boundary spike in flow",
    "pose_amp": "amplitude of the (person-centric) motion signal in pose",
    "pose_noise": "pose white noise",
    "rgb_motion": "amplitude of the weak copy of the motion signal seen by RGB",
    "label_drop": "training subset only: probability that an instance is not annotated",
    "label_jitter": "training subset only: max boundary shift, as a share of the instance length",
    "phases": "v2: number of sub-action phases shared by the classes",
    "min_phases": "v2: fewest phases in a class",
    "max_phases": "v2: most phases in a class",
    "tail": "v2: class frequency ~ (rank + 1)^-tail (long tail)",
    "phase_spread": "v2: Dirichlet concentration of an instance's phase durations around its class's",
    "appearance_var": "v2: per-instance variation of the class appearance (norm, relative to rgb_amp)",
    "motion_blur": "v2: std (steps) of the temporal blur of RGB's copy of the motion signal",
    "views": "v2: viewpoints per class: each video shows every class's appearance from one of them (1: one "
             "appearance per class)",
    "extra_training": "videos added to the training subset only, after the others: the same world and the "
                      "same validation and testing videos (the RGB ceiling's larger training set)",
    "extra_subset": "subset of the extra videos: 'training', or 'unlabelled' (the same videos, bit for bit, "
                    "written without labels or segments: what a student may distil on)",
    "extra_unlabelled": "videos added after the extra ones, without labels or segments (subset 'unlabelled'): "
                        "a larger labelled set and videos to distil on in one file",
}


@dataclass(frozen=True)
class SyntheticConfig:
    """All knobs of the generator (defaults = benchmark v2, the embedded default)."""

    world: str = "v2"
    videos: int = 240
    classes: int = 14
    min_steps: int = 64
    max_steps: int = 192
    rgb_dim: int = 64
    flow_dim: int = 32
    pose_dim: int = 32
    step_seconds: float = 1.0 / 3.0
    test_fraction: float = 0.25
    val_fraction: float = 0.15
    rgb_amp: float = 0.8
    rgb_noise: float = 1.0
    blur: float = 3.0
    confusion: float = 0.35
    scene: float = 1.0
    drift: float = 1.2
    flow_amp: float = 1.0
    flow_noise: float = 2.0
    flow_drift: float = 1.0
    boundary_amp: float = 1.0
    pose_amp: float = 1.0
    pose_noise: float = 1.5
    rgb_motion: float = 0.3
    label_drop: float = 0.15
    label_jitter: float = 0.2
    phases: int = 10
    min_phases: int = 2
    max_phases: int = 4
    tail: float = 1.0
    phase_spread: float = 6.0
    appearance_var: float = 0.5
    motion_blur: float = 2.0
    views: int = 1
    extra_training: int = 0
    extra_subset: str = TRAINING
    extra_unlabelled: int = 0

    def check(self) -> None:
        if self.videos < 2:
            raise ValueError(f"videos must be >= 2 (one per subset), got {self.videos}")
        if self.extra_training < 0:
            raise ValueError(f"extra_training must be >= 0, got {self.extra_training}")
        if self.extra_unlabelled < 0:
            raise ValueError(f"extra_unlabelled must be >= 0, got {self.extra_unlabelled}")
        if self.extra_subset not in (TRAINING, UNLABELLED):
            raise ValueError(f"extra_subset must be {TRAINING!r} or {UNLABELLED!r}, got {self.extra_subset!r}")
        if self.classes < 1:
            raise ValueError(f"classes must be >= 1, got {self.classes}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        for name in ("rgb_dim", "flow_dim", "pose_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0 - self.test_fraction:
            raise ValueError(f"val_fraction must be in [0, 1 - test_fraction), got {self.val_fraction}")
        if not 0.0 <= self.confusion <= 1.0:
            raise ValueError(f"confusion must be in [0, 1], got {self.confusion}")
        if not 0.0 <= self.label_drop <= 1.0:
            raise ValueError(f"label_drop must be in [0, 1], got {self.label_drop}")
        if self.label_jitter < 0.0:
            raise ValueError(f"label_jitter must be >= 0, got {self.label_jitter}")
        if self.step_seconds <= 0:
            raise ValueError(f"step_seconds must be > 0, got {self.step_seconds}")
        if self.world not in PRESETS:
            raise ValueError(f"world must be one of {sorted(PRESETS)}, got {self.world!r}")
        if self.world == "v2":
            if not 1 <= self.min_phases <= self.max_phases:
                raise ValueError(f"need 1 <= min_phases <= max_phases, got {self.min_phases}, {self.max_phases}")
            if self.phases < self.max_phases:
                raise ValueError(f"phases must be >= max_phases ({self.max_phases}), got {self.phases}")
            if self.phase_spread <= 0:
                raise ValueError(f"phase_spread must be > 0, got {self.phase_spread}")
            if self.views < 1:
                raise ValueError(f"views must be >= 1, got {self.views}")


#: Named worlds. ``v1`` is the first benchmark (constant-intensity boxes, RGB blind to
#: motion, exact labels); it reproduces that generator's files bit for bit.
PRESETS: dict[str, dict] = {
    "v2": {},
    "v2.0": dict(rgb_amp=1.0, rgb_motion=0.4),
    "v1": dict(world="v1", rgb_amp=1.0, boundary_amp=1.5, pose_noise=1.0, rgb_motion=0.0, label_drop=0.0,
               label_jitter=0.0),
    # v2 seen from 3 viewpoints, RGB's appearance calibrated again (docstring, "Viewpoints")
    "views": dict(views=3, rgb_amp=2.0),
}

#: The calibration of the default world, written into every file (``generator_revision``)
#: so that ``make train`` can tell a file of an earlier calibration from today's: 1 was
#: ``v2.0`` (RGB appearance 1.0, RGB motion 0.4), 2 is today's ``v2``.
REVISION = 2


def config(preset: str = "v2", **options) -> SyntheticConfig:
    """The configuration of ``preset`` with ``options`` on top (a bad value raises ValueError)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = SyntheticConfig(**{**PRESETS[preset], **options})
    cfg.check()
    return cfg


def generate(out: str | Path, seed: int = 0, dtype: str = "float16", preset: str = "v2", **options) -> Path:
    """Write the synthetic benchmark to ``out`` (atomically) and return the path.

    ``preset`` names a world (:data:`PRESETS`: ``v2``, the default, or ``v1``); ``options``
    are :class:`SyntheticConfig` fields on top of it (``videos``, ``classes``, ``min_steps``,
    ``max_steps``, ``rgb_dim``, ``flow_dim``, ``pose_dim``, noise knobs...).
    """
    cfg = config(preset, **options)
    order = np.random.default_rng([seed, 2**31 - 2]).permutation(cfg.videos)
    n_test = min(cfg.videos - 1, max(1, int(round(cfg.test_fraction * cfg.videos))))
    testing = set(order[:n_test].tolist())
    n_val = int(round(cfg.val_fraction * cfg.videos)) if cfg.val_fraction > 0 else 0
    n_val = min(max(n_val, 1 if cfg.val_fraction > 0 else 0), cfg.videos - n_test - 1)
    validation = set(order[n_test : n_test + n_val].tolist())
    attrs = {"generator": "data_prep.synthetic", "seed": int(seed), "step_seconds": float(cfg.step_seconds),
             # how the file was made, for `make train` (kd_detect.lab.runner) to compare
             "generator_preset": preset, "generator_options": json.dumps(dict(sorted(options.items()))),
             "generator_revision": REVISION}
    if cfg.world == "v1":
        protos = _prototypes(cfg, seed)
        attrs["confusable_pairs"] = np.asarray(confusable_pairs(cfg.classes), dtype=np.int64).reshape(-1, 2)
        attrs["person_classes"] = np.asarray(person_classes(cfg.classes), dtype=np.int64)
        make = lambda i, subset: _video(cfg, protos, seed, i, subset)  # noqa: E731
    else:
        world = world_v2(cfg, seed)
        padded = np.full((cfg.classes, cfg.max_phases), -1, dtype=np.int64)
        for k, ph in enumerate(world.class_phases):
            padded[k, : len(ph)] = ph
        attrs.update(
            world="v2",
            confusable_pairs=np.asarray(world.pairs, dtype=np.int64).reshape(-1, 2),
            class_phases=padded,
            class_prior=world.prior,
            person_phases=np.asarray(person_phases(cfg.phases), dtype=np.int64),
            label_drop=float(cfg.label_drop),
            label_jitter=float(cfg.label_jitter),
        )
        make = lambda i, subset: _video_v2(cfg, world, seed, i, subset)  # noqa: E731
    if cfg.extra_training:  # the split above is of the first `videos` only: extras add to training
        attrs["extra_training"] = int(cfg.extra_training)
    if cfg.extra_unlabelled:
        attrs["extra_unlabelled"] = int(cfg.extra_unlabelled)
    classes = [f"c{c:02d}" for c in range(cfg.classes)]
    drawn = cfg.videos + cfg.extra_training  # videos i >= drawn are the extra unlabelled ones
    with FeatureFileWriter(out, classes, ["rgb", "flow", "pose"], dtype=dtype, attrs=attrs) as writer:
        for i in range(drawn + cfg.extra_unlabelled):
            raise_pending_signal()  # a Ctrl-C that a finaliser swallowed (kd_detect.io)
            subset = TESTING if i in testing else VALIDATION if i in validation else TRAINING
            video = make(i, subset)
            unannotated = i >= drawn or (i >= cfg.videos and cfg.extra_subset == UNLABELLED)
            if unannotated:  # drawn as training videos, then written without their annotations
                video = VideoRecord(video.video_id, UNLABELLED, video.duration, video.features, attrs=video.attrs)
            writer.add(video)
    return Path(out)


#: Options that only the v2 world reads.
V2_ONLY = ("phases", "min_phases", "max_phases", "tail", "phase_spread", "appearance_var", "motion_blur", "views")


def _v1_default(name: str, value) -> str:
    return "unused" if name in V2_ONLY else str(PRESETS["v1"].get(name, value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.synthetic",
        description=__doc__.split("\n")[0] + " Options left out take the preset's value.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, default=argparse.SUPPRESS, help="output .h5 file (written atomically)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="v2",
                        help="named world: v2 (the default benchmark), v2.0 (its first calibration), views (v2 from 3 "
                             "viewpoints: RGB's evidence not linear) or v1 (the first world, bit for bit)")
    defaults = SyntheticConfig()
    for name, value in vars(defaults).items():
        if name == "world":
            continue  # chosen by --preset
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=argparse.SUPPRESS, dest=name,
                            help=f"{HELP[name]} (v2 default: {value}; v1: {_v1_default(name, value)})")
    args = vars(parser.parse_args(argv))
    out, seed, dtype, preset = args.pop("out"), args.pop("seed"), args.pop("dtype"), args.pop("preset")
    options = args  # only the options given on the command line
    try:
        cfg = config(preset, **options)
    except ValueError as err:
        parser.error(str(err))
    try:
        ensure_writable_file(out)
        path = generate(out, seed=seed, dtype=dtype, preset=preset, **options)
    except KdDetectError as err:  # an unwritable --out: one line, status 1
        raise SystemExit(f"{parser.prog}: error: {err}") from None
    except KeyboardInterrupt:  # one line, status 130
        raise SystemExit(interrupted(parser.prog, out)) from None
    extra = f" + {cfg.extra_training} extra {cfg.extra_subset}" if cfg.extra_training else ""
    extra += f" + {cfg.extra_unlabelled} extra unlabelled" if cfg.extra_unlabelled else ""
    print(f"wrote {path} (world {cfg.world}, {cfg.videos}{extra} videos, {cfg.classes} classes, seed {seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
