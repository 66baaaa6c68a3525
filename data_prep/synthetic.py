"""Synthetic multi-modal action-detection benchmark (the embedded default, DESIGN.md §6).

``python -m data_prep.synthetic --out data/synthetic.h5 [--preset v2|v1] [--seed 0] [options]``
or :func:`generate`. Deterministic per seed (same seed and options, same bytes: video ``i``
is drawn from its own generator seeded with ``(seed, i, ...)``), written through the
format-v1 atomic writer (DESIGN.md §4) with subsets ``training`` / ``validation`` /
``testing`` (~60/15/25 by default): model selection (best checkpoint, LR plateaus)
happens on ``validation`` so the test figures are not chosen on the test set.

Two worlds (``--preset``): **v2**, the default, described first, and **v1**, the first
benchmark, kept for regression (it reproduces that generator's files bit for bit).

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
* **Realistic training annotations by default** (``training`` subset only): each
  instance is unannotated with probability ``label_drop`` (0.15) and each annotated
  boundary moves by ``U(-j, j) * length``, ``j = label_jitter`` (0.2); the features
  follow the true actions and ``validation`` / ``testing`` labels are exact. *Real:*
  crowd-sourced Charades training labels miss instances and disagree on boundaries
  (inter-annotator boundary agreement is low), whereas evaluation wants exact labels.
* **Size** as v1 (240 videos of 64-192 steps, 14 classes, 64/32/32 dims) so that
  ``make train`` stays within ~10 minutes on 2 cores.

Measured on the default file (seed 0), test frame mAP: linear probe
(``python -m kd_detect.lab.probe FILE --modalities ...``, ridge, ±2 steps) RGB 71.40,
flow 21.54, flow+pose 30.73, RGB+flow+pose 77.95 (+9 % relative; generator seeds 1 and 2:
+9 %, +7 %); PDAN-128, 30 epochs (``experiments/synthetic_rgb.yaml`` /
``synthetic_teacher.yaml``), training seeds 0 / 1 / 2: RGB 54.13 / 57.65 / 57.54, teacher
66.57 / 71.67 / 67.89 (+23 / +24 / +18 % relative; means 56.44 and 68.71, +22 %).
v1 for comparison: probe 72.35 / 98.19, PDAN 65.4 / 96.8 (+48 %).
PDAN scores below the linear probe on both (RGB by 14-17 points, the teacher by 6-11): its
recipe is under-regularised for noisy training labels (issue 13 part B), which also
makes its relative gap larger than the probe's; expect it to shrink as that recipe improves.

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
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kd_detect.data.format import FeatureFileWriter, VideoRecord, labels_from_segments

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
    rgb_amp: float = 1.0
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
    rgb_motion: float = 0.4
    label_drop: float = 0.15
    label_jitter: float = 0.2
    phases: int = 10
    min_phases: int = 2
    max_phases: int = 4
    tail: float = 1.0
    phase_spread: float = 6.0
    appearance_var: float = 0.5
    motion_blur: float = 2.0

    def check(self) -> None:
        if self.videos < 2:
            raise ValueError(f"videos must be >= 2 (one per subset), got {self.videos}")
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


#: Named worlds. ``v1`` is the first benchmark (constant-intensity boxes, RGB blind to
#: motion, exact labels); it reproduces that generator's files bit for bit.
PRESETS: dict[str, dict] = {
    "v2": {},
    "v1": dict(world="v1", boundary_amp=1.5, pose_noise=1.0, rgb_motion=0.0, label_drop=0.0, label_jitter=0.0),
}


def config(preset: str = "v2", **options) -> SyntheticConfig:
    """The configuration of ``preset`` with ``options`` on top (a bad value raises ValueError)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = SyntheticConfig(**{**PRESETS[preset], **options})
    cfg.check()
    return cfg


def confusable_pairs(num_classes: int) -> list[tuple[int, int]]:
    """Pairs of classes that share most of their RGB prototype: ``(0,1), (2,3), ...``."""
    return [(2 * k, 2 * k + 1) for k in range(num_classes // 4)]


def person_classes(num_classes: int) -> list[int]:
    """Classes visible in pose (person-centric): ``c % 3 != 2``."""
    return [c for c in range(num_classes) if c % 3 != 2]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass
class _Prototypes:
    rgb: np.ndarray  # (C, D_rgb)
    flow: np.ndarray  # (C, D_flow)
    pose: np.ndarray  # (C, D_pose), zero rows for non-person classes
    boundary: np.ndarray  # (D_flow,)
    motion: np.ndarray  # (C,)
    class_prior: np.ndarray  # (C,)
    motion_to_rgb: np.ndarray  # (D_flow, D_rgb) how RGB features weakly see motion


def _prototypes(cfg: SyntheticConfig, seed: int) -> _Prototypes:
    rng = np.random.default_rng([seed, 2**31 - 1])
    c = cfg.classes
    rgb = _unit(rng, c, cfg.rgb_dim)
    for a, b in confusable_pairs(c):
        weak = rgb[b] - (rgb[b] @ rgb[a]) * rgb[a]  # the pair's own cue, orthogonal to the shared part
        weak /= np.linalg.norm(weak) + 1e-12
        rgb[b] = math.sqrt(1.0 - cfg.confusion**2) * rgb[a] + cfg.confusion * weak
    flow = _unit(rng, c, cfg.flow_dim)
    pose = _unit(rng, c, cfg.pose_dim)
    mask = np.zeros(c, dtype=bool)
    mask[person_classes(c)] = True
    pose[~mask] = 0.0
    boundary = _unit(rng, 1, cfg.flow_dim)[0]
    motion = rng.uniform(0.3, 1.2, size=c)
    prior = 1.0 / np.sqrt(1.0 + rng.permutation(c))  # mild long tail, class order shuffled
    # drawn last so the other prototypes do not depend on it
    big, small = max(cfg.rgb_dim, cfg.flow_dim), min(cfg.rgb_dim, cfg.flow_dim)
    q = np.linalg.qr(rng.standard_normal((big, small)))[0]  # orthonormal columns
    motion_to_rgb = q.T if cfg.rgb_dim >= cfg.flow_dim else q  # (D_flow, D_rgb), an isometry where it can be
    return _Prototypes(rgb, flow, pose, boundary, motion, prior / prior.sum(), motion_to_rgb)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``x (T, C)`` along time (zero outside the video)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        out[:, c] = np.convolve(x[:, c], k, mode="full")[radius : radius + x.shape[0]]
    return out


def _ar1(rng: np.random.Generator, num_steps: int, dim: int, std: float, rho: float = 0.95) -> np.ndarray:
    """Slow stationary AR(1) drift ``(T, dim)`` of total (vector) std ``std``."""
    scale = std / math.sqrt(dim)
    noise = rng.standard_normal((num_steps, dim)) * scale * math.sqrt(1 - rho**2)
    out = np.empty((num_steps, dim))
    state = rng.standard_normal(dim) * scale
    for t in range(num_steps):
        state = rho * state + noise[t]
        out[t] = state
    return out


def _annotation_noise(
    cfg: SyntheticConfig, segments: np.ndarray, duration: float, rng: np.random.Generator
) -> np.ndarray:
    """The annotated segments of a training video: each true instance is missing with
    probability ``label_drop``; each boundary moves by ``U(-j, j) * length``, ``j = label_jitter``
    (clipped to the video; an instance whose annotated end falls before its start is missing)."""
    keep = rng.random(len(segments)) >= cfg.label_drop
    length = segments[:, 2] - segments[:, 1]
    shift = rng.uniform(-cfg.label_jitter, cfg.label_jitter, size=(len(segments), 2)) * length[:, None]
    noisy = segments.copy()
    noisy[:, 1:] = np.clip(segments[:, 1:] + shift, 0.0, duration)
    keep &= noisy[:, 2] > noisy[:, 1]
    return noisy[keep]


def _video(cfg: SyntheticConfig, protos: _Prototypes, seed: int, index: int, subset: str) -> VideoRecord:
    rng = np.random.default_rng([seed, index])
    num_steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
    duration = num_steps * cfg.step_seconds
    times = np.arange(num_steps) * (duration / num_steps)

    # --- action instances (seconds) and the activity they drive ---------------------
    n_inst = 1 + int(rng.poisson(num_steps / 40.0))
    segments = np.zeros((n_inst, 3))
    activity = np.zeros((num_steps, cfg.classes))
    onsets: list[int] = []
    for j in range(n_inst):
        cls = int(rng.choice(cfg.classes, p=protos.class_prior))
        length = min(float(np.exp(rng.uniform(np.log(4.0), np.log(64.0)))), float(num_steps))
        start = rng.uniform(-0.25 * length, num_steps - 0.75 * length)
        start_s = max(0.0, start) * cfg.step_seconds
        end_s = min(float(num_steps), start + length) * cfg.step_seconds
        segments[j] = (cls, start_s, end_s)
        inside = (times > start_s) & (times < end_s)  # the strict label rule, DESIGN.md §4
        if inside.any():
            activity[inside, cls] = np.maximum(activity[inside, cls], rng.uniform(0.6, 1.4))
            steps = np.flatnonzero(inside)
            onsets.extend([steps[0], steps[-1]])
    if subset == TRAINING and (cfg.label_drop > 0 or cfg.label_jitter > 0):
        segments = _annotation_noise(cfg, segments, duration, np.random.default_rng([seed, index, 1]))
    segments = segments[np.lexsort((segments[:, 1], segments[:, 0]))]
    labels = labels_from_segments(segments, num_steps, duration, cfg.classes)

    # --- RGB: blurred, noisy, confusable pairs, scene + drift -------------------------
    scene = rng.standard_normal(cfg.rgb_dim) * cfg.scene / math.sqrt(cfg.rgb_dim)
    drift = _ar1(rng, num_steps, cfg.rgb_dim, cfg.drift)
    # RGB features of several frames see motion too, weakly: the sharp (unblurred) motion
    # and boundary signal of the flow stream, through a fixed projection, at ``rgb_motion``.
    spikes = np.zeros(num_steps)
    for s in onsets:
        spikes[s] += 1.0
    spikes = np.convolve(spikes, [0.5, 1.0, 0.5], mode="same")
    motion_signal = (activity * protos.motion) @ protos.flow + cfg.boundary_amp * spikes[:, None] * protos.boundary
    rgb = (
        cfg.rgb_amp * _blur(activity, cfg.blur) @ protos.rgb
        + cfg.rgb_motion * motion_signal @ protos.motion_to_rgb
        + scene
        + drift
        + cfg.rgb_noise * rng.standard_normal((num_steps, cfg.rgb_dim)) / math.sqrt(cfg.rgb_dim)
    )

    # --- flow: sharp motion + boundary spikes -----------------------------------------
    flow = (
        cfg.flow_amp * (activity * protos.motion) @ protos.flow
        + cfg.boundary_amp * spikes[:, None] * protos.boundary
        + _ar1(rng, num_steps, cfg.flow_dim, cfg.flow_drift)
        + cfg.flow_noise * rng.standard_normal((num_steps, cfg.flow_dim)) / math.sqrt(cfg.flow_dim)
    )

    # --- pose: clean for person-centric classes, noise otherwise ----------------------
    pose_signal = cfg.pose_amp * activity @ protos.pose
    if rng.random() < 0.15:  # tracking dropout
        a = int(rng.integers(0, num_steps))
        pose_signal[a : a + int(rng.integers(8, 32))] = 0.0
    pose = pose_signal + cfg.pose_noise * rng.standard_normal((num_steps, cfg.pose_dim)) / math.sqrt(cfg.pose_dim)

    return VideoRecord(
        video_id=f"syn_{index:05d}",
        subset=subset,
        duration=duration,
        features={"rgb": rgb, "flow": flow, "pose": pose},
        segments=segments,
        labels=labels,
    )


# ----------------------------------------------------------------------------- world v2
@dataclass
class World:
    """The class structure of benchmark v2 (drawn once per seed)."""

    prior: np.ndarray  # (C,) class frequencies, long-tailed
    frequent: np.ndarray  # (C,) bool: the head of the tail (rank < ceil(C / 2))
    class_phases: list[np.ndarray]  # per class, its phase ids in temporal order (2-4 of them)
    class_shares: list[np.ndarray]  # per class, the mean share of the instance each phase takes
    pairs: list[tuple[int, int]]  # (frequent, rare) classes that share most of their RGB appearance
    appearance: np.ndarray  # (C, D_rgb) unit class appearance in RGB
    phase_flow: np.ndarray  # (P, D_flow) unit motion direction of each phase
    phase_pose: np.ndarray  # (P, D_pose) unit, zero rows for phases invisible in pose
    strength: np.ndarray  # (P,) motion strength of each phase
    boundary: np.ndarray  # (D_flow,) shared direction of the instance-boundary spike
    motion_to_rgb: np.ndarray  # (D_flow, D_rgb) how RGB weakly sees the motion signal


def person_phases(num_phases: int) -> list[int]:
    """Phases visible in pose (the person moves): ``p % 3 != 2``."""
    return [p for p in range(num_phases) if p % 3 != 2]


def world_v2(cfg: SyntheticConfig, seed: int) -> World:
    """Draw the classes' phases, frequencies and prototypes (see the module docstring)."""
    rng = np.random.default_rng([seed, 2**31 - 1, 2])
    c, p = cfg.classes, cfg.phases
    rank = rng.permutation(c)  # rank[k] = frequency rank of class k (0 = most frequent)
    prior = (1.0 + rank) ** -cfg.tail
    frequent = rank < math.ceil(c / 2)
    phases: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * c
    seen: set[frozenset] = set()

    def draw(pool: np.ndarray) -> np.ndarray:
        n = int(rng.integers(cfg.min_phases, min(cfg.max_phases, len(pool)) + 1))
        for _ in range(1000):  # distinct phase sets, while there are enough of them
            pick = rng.choice(pool, size=n, replace=False)
            if frozenset(pick.tolist()) not in seen:
                break
        seen.add(frozenset(pick.tolist()))
        return pick.astype(np.int64)

    for k in np.argsort(rank):  # frequent classes first, from every phase
        if frequent[k]:
            phases[k] = draw(np.arange(p))
    used = np.unique(np.concatenate([phases[k] for k in range(c) if frequent[k]]))
    for k in np.argsort(rank):  # rare classes reuse the frequent classes' phases
        if not frequent[k]:
            phases[k] = draw(used)
    shares = [rng.dirichlet(np.full(len(ph), 4.0)) for ph in phases]
    by_rank = np.argsort(rank)
    head = int(frequent.sum())
    pairs = [(int(by_rank[i]), int(by_rank[head + i])) for i in range(min(c // 4, c - head))]
    appearance = _unit(rng, c, cfg.rgb_dim)
    for a, b in pairs:
        weak = appearance[b] - (appearance[b] @ appearance[a]) * appearance[a]
        weak /= np.linalg.norm(weak) + 1e-12
        appearance[b] = math.sqrt(1.0 - cfg.confusion**2) * appearance[a] + cfg.confusion * weak
    phase_flow = _unit(rng, p, cfg.flow_dim)
    phase_pose = _unit(rng, p, cfg.pose_dim)
    invisible = np.ones(p, dtype=bool)
    invisible[person_phases(p)] = False
    phase_pose[invisible] = 0.0
    strength = rng.uniform(0.5, 1.2, size=p)
    boundary = _unit(rng, 1, cfg.flow_dim)[0]
    big, small = max(cfg.rgb_dim, cfg.flow_dim), min(cfg.rgb_dim, cfg.flow_dim)
    q = np.linalg.qr(rng.standard_normal((big, small)))[0]
    motion_to_rgb = q.T if cfg.rgb_dim >= cfg.flow_dim else q
    return World(prior / prior.sum(), frequent, phases, shares, pairs, appearance, phase_flow, phase_pose,
                 strength, boundary, motion_to_rgb)


def _video_v2(cfg: SyntheticConfig, world: World, seed: int, index: int, subset: str) -> VideoRecord:
    rng = np.random.default_rng([seed, index, 2])
    num_steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
    duration = num_steps * cfg.step_seconds
    times = np.arange(num_steps) * (duration / num_steps)
    pos = np.arange(num_steps, dtype=np.float64)  # step index = time / step_seconds

    n_inst = 1 + int(rng.poisson(num_steps / 40.0))
    segments = np.zeros((n_inst, 3))
    phase_act = np.zeros((num_steps, cfg.phases))
    appearance = np.zeros((num_steps, cfg.rgb_dim))
    spikes = np.zeros(num_steps)
    for j in range(n_inst):
        cls = int(rng.choice(cfg.classes, p=world.prior))
        length = min(float(np.exp(rng.uniform(np.log(8.0), np.log(64.0)))), float(num_steps))
        start = rng.uniform(-0.25 * length, num_steps - 0.75 * length)
        intensity = rng.uniform(0.6, 1.4)
        look = world.appearance[cls] + cfg.appearance_var * _unit(rng, 1, cfg.rgb_dim)[0]
        share = rng.dirichlet(cfg.phase_spread * len(world.class_phases[cls]) * world.class_shares[cls])
        cuts = start + length * np.concatenate([[0.0], np.cumsum(share)])
        start_s = max(0.0, start) * cfg.step_seconds
        end_s = min(float(num_steps), start + length) * cfg.step_seconds
        segments[j] = (cls, start_s, end_s)
        inside = (times > start_s) & (times < end_s)  # the strict label rule, DESIGN.md §4
        if not inside.any():
            continue
        steps = np.flatnonzero(inside)
        spikes[[steps[0], steps[-1]]] += 1.0
        presence = np.zeros(num_steps)
        presence[inside] = intensity
        appearance += _blur(presence[:, None], cfg.blur) * look
        which = np.clip(np.searchsorted(cuts, pos[inside], side="right") - 1, 0, len(share) - 1)
        for k, ph in enumerate(world.class_phases[cls]):
            on = steps[which == k]
            phase_act[on, ph] = np.maximum(phase_act[on, ph], intensity)
    if subset == TRAINING and (cfg.label_drop > 0 or cfg.label_jitter > 0):
        segments = _annotation_noise(cfg, segments, duration, np.random.default_rng([seed, index, 1]))
    segments = segments[np.lexsort((segments[:, 1], segments[:, 0]))]
    labels = labels_from_segments(segments, num_steps, duration, cfg.classes)

    spikes = np.convolve(spikes, [0.5, 1.0, 0.5], mode="same")
    motion = (phase_act * world.strength) @ world.phase_flow + cfg.boundary_amp * spikes[:, None] * world.boundary
    rgb = (
        cfg.rgb_amp * appearance
        + cfg.rgb_motion * _blur(motion, cfg.motion_blur) @ world.motion_to_rgb
        + rng.standard_normal(cfg.rgb_dim) * cfg.scene / math.sqrt(cfg.rgb_dim)
        + _ar1(rng, num_steps, cfg.rgb_dim, cfg.drift)
        + cfg.rgb_noise * rng.standard_normal((num_steps, cfg.rgb_dim)) / math.sqrt(cfg.rgb_dim)
    )
    flow = (
        cfg.flow_amp * motion
        + _ar1(rng, num_steps, cfg.flow_dim, cfg.flow_drift)
        + cfg.flow_noise * rng.standard_normal((num_steps, cfg.flow_dim)) / math.sqrt(cfg.flow_dim)
    )
    pose_signal = cfg.pose_amp * phase_act @ world.phase_pose
    if rng.random() < 0.15:  # tracking dropout
        a = int(rng.integers(0, num_steps))
        pose_signal[a : a + int(rng.integers(8, 32))] = 0.0
    pose = pose_signal + cfg.pose_noise * rng.standard_normal((num_steps, cfg.pose_dim)) / math.sqrt(cfg.pose_dim)
    return VideoRecord(
        video_id=f"syn_{index:05d}",
        subset=subset,
        duration=duration,
        features={"rgb": rgb, "flow": flow, "pose": pose},
        segments=segments,
        labels=labels,
    )


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
    attrs = {"generator": "data_prep.synthetic", "seed": int(seed), "step_seconds": float(cfg.step_seconds)}
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
    classes = [f"c{c:02d}" for c in range(cfg.classes)]
    with FeatureFileWriter(out, classes, ["rgb", "flow", "pose"], dtype=dtype, attrs=attrs) as writer:
        for i in range(cfg.videos):
            subset = TESTING if i in testing else VALIDATION if i in validation else TRAINING
            writer.add(make(i, subset))
    return Path(out)


#: Options that only the v2 world reads.
V2_ONLY = ("phases", "min_phases", "max_phases", "tail", "phase_spread", "appearance_var", "motion_blur")


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
                        help="named world: v2 (the default benchmark) or v1 (the first one, bit for bit)")
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
        path = generate(out, seed=seed, dtype=dtype, preset=preset, **options)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {path} (world {cfg.world}, {cfg.videos} videos, {cfg.classes} classes, seed {seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
