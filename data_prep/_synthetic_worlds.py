"""The two synthetic worlds' generative models (see :mod:`data_prep.synthetic`, whose
docstring documents every choice): v1, class-level prototypes (``_prototypes``, ``_video``),
and v2, actions made of shared sub-action phases (``world_v2``, ``_video_v2``), with the
helpers both draw with. Kept apart from the command and the presets so each module reads on
one subject."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kd_detect.data.format import VideoRecord, labels_from_segments

if TYPE_CHECKING:
    from data_prep.synthetic import SyntheticConfig

TRAINING = "training"


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


def _pose(rng: np.random.Generator, cfg: SyntheticConfig, signal: np.ndarray) -> np.ndarray:
    """Pose stream of both worlds: the clean signal with, in 15 % of videos, a tracking
    dropout span of 8-31 steps set to zero, plus white noise (``pose_noise``)."""
    num_steps = signal.shape[0]
    if rng.random() < 0.15:  # tracking dropout
        a = int(rng.integers(0, num_steps))
        signal[a : a + int(rng.integers(8, 32))] = 0.0
    return signal + cfg.pose_noise * rng.standard_normal((num_steps, cfg.pose_dim)) / math.sqrt(cfg.pose_dim)


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
    pose = _pose(rng, cfg, cfg.pose_amp * activity @ protos.pose)
    return VideoRecord(f"syn_{index:05d}", subset, duration, {"rgb": rgb, "flow": flow, "pose": pose}, segments, labels)


# ----------------------------------------------------------------------------- world v2
@dataclass
class World:
    """The class structure of benchmark v2 (drawn once per seed)."""

    prior: np.ndarray  # (C,) class frequencies, long-tailed
    frequent: np.ndarray  # (C,) bool: the head of the tail (rank < ceil(C / 2))
    class_phases: list[np.ndarray]  # per class, its phase ids in temporal order (2-4 of them)
    class_shares: list[np.ndarray]  # per class, the mean share of the instance each phase takes
    pairs: list[tuple[int, int]]  # (frequent, rare) classes that share most of their RGB appearance
    appearance: np.ndarray  # (C, D_rgb) unit class appearance in RGB (the first view's)
    phase_flow: np.ndarray  # (P, D_flow) unit motion direction of each phase
    phase_pose: np.ndarray  # (P, D_pose) unit, zero rows for phases invisible in pose
    strength: np.ndarray  # (P,) motion strength of each phase
    boundary: np.ndarray  # (D_flow,) shared direction of the instance-boundary spike
    motion_to_rgb: np.ndarray  # (D_flow, D_rgb) how RGB weakly sees the motion signal
    views: np.ndarray | None = None  # (V, C, D_rgb) the class appearance per viewpoint (views > 1 only)


def person_phases(num_phases: int) -> list[int]:
    """Phases visible in pose (the person moves): ``p % 3 != 2``."""
    return [p for p in range(num_phases) if p % 3 != 2]


def _confusable(looks: np.ndarray, pairs: list[tuple[int, int]], confusion: float) -> np.ndarray:
    """``looks`` (C, D) unit rows, each pair's second row moved (in place) to
    ``sqrt(1 - e^2) * first + e * (its own part orthogonal to the first)``, ``e = confusion``."""
    for a, b in pairs:
        weak = looks[b] - (looks[b] @ looks[a]) * looks[a]
        weak /= np.linalg.norm(weak) + 1e-12
        looks[b] = math.sqrt(1.0 - confusion**2) * looks[a] + confusion * weak
    return looks


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
    appearance = _confusable(_unit(rng, c, cfg.rgb_dim), pairs, cfg.confusion)
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
    views = None
    if cfg.views > 1:  # drawn from a generator of their own: every other array is as with one view
        vrng = np.random.default_rng([seed, 2**31 - 1, 3])
        views = np.stack([appearance] + [_confusable(_unit(vrng, c, cfg.rgb_dim), pairs, cfg.confusion)
                                         for _ in range(cfg.views - 1)])
    return World(prior / prior.sum(), frequent, phases, shares, pairs, appearance, phase_flow, phase_pose,
                 strength, boundary, motion_to_rgb, views)


def _video_v2(cfg: SyntheticConfig, world: World, seed: int, index: int, subset: str) -> VideoRecord:
    rng = np.random.default_rng([seed, index, 2])
    num_steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
    duration = num_steps * cfg.step_seconds
    times = np.arange(num_steps) * (duration / num_steps)
    pos = np.arange(num_steps, dtype=np.float64)  # step index = time / step_seconds

    n_inst = 1 + int(rng.poisson(num_steps / 40.0))
    segments = np.zeros((n_inst, 3))
    # the video's viewpoint, from a generator of its own (one view: no draw, today's bytes)
    class_looks = world.appearance if world.views is None else world.views[
        int(np.random.default_rng([seed, index, 3]).integers(cfg.views))]
    phase_act = np.zeros((num_steps, cfg.phases))
    appearance = np.zeros((num_steps, cfg.rgb_dim))
    spikes = np.zeros(num_steps)
    for j in range(n_inst):
        cls = int(rng.choice(cfg.classes, p=world.prior))
        length = min(float(np.exp(rng.uniform(np.log(8.0), np.log(64.0)))), float(num_steps))
        start = rng.uniform(-0.25 * length, num_steps - 0.75 * length)
        intensity = rng.uniform(0.6, 1.4)
        look = class_looks[cls] + cfg.appearance_var * _unit(rng, 1, cfg.rgb_dim)[0]
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
    pose = _pose(rng, cfg, cfg.pose_amp * phase_act @ world.phase_pose)
    return VideoRecord(f"syn_{index:05d}", subset, duration, {"rgb": rgb, "flow": flow, "pose": pose}, segments, labels)
