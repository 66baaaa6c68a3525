"""Builders of small RAW directories in the exact public release layouts (invented ids,
annotations and feature values), for the converter tests and for end-to-end runs::

    raw = make_charades_raw(tmp_path / "raw")          # then: make data DATASET=charades RAW=<raw>

One ``make_<name>_raw(dir, *, videos=6, feature_dim=16, seed=0) -> Path`` per dataset
builds a complete, clean RAW directory (both subsets, every modality). Features carry a
learnable signal: ``0.5 * noise + sum of a per-class prototype over the classes active
at the step`` (strict rule), so a detector trained on them beats chance.

For messy inputs, build a plan (``<name>_plan``), append hand-made
:class:`FixtureVideo` rows (out-of-range actions, missing files, NaN, length deltas...)
and write it with ``write_<name>_raw``. Plans are in the **release's own units and
class numbering** (see :class:`FixtureVideo`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kd_detect.data.format import labels_from_segments

CHARADES_CLASSES = 157
TSU_CLASSES = 51
TSU_FPS = 25.0
PKU_CLASSES = 51
PKU_FPS = 30.0
PKU_FRAMES_PER_STEP = 8
MULTITHUMOS_CLASSES = 65
MULTITHUMOS_STEPS_PER_SECOND = 25 / 8
CHARADES_COLUMNS = (
    "id", "subject", "scene", "quality", "relevance", "verified",
    "script", "objects", "descriptions", "actions", "length",
)


@dataclass
class FixtureVideo:
    """One video of a fixture release.

    Units follow the release: ``duration`` and action times are seconds for Charades and
    MultiTHUMOS, frames for TSU and PKU-MMD (where ``duration`` is the frame count).
    Class numbering too: 0-based for Charades (``cNNN``) and TSU, 1-based for PKU-MMD
    labels and MultiTHUMOS. ``subset`` is the release's value ("training"/"testing";
    MultiTHUMOS may use "validation"). Messy knobs: ``steps`` overrides the rgb step
    count, ``length_delta[m]`` adds steps to modality ``m``, ``missing`` names files not
    written (a modality, "skeleton" or "label"), ``nan_in`` modalities given a NaN.
    """

    video_id: str
    subset: str
    duration: float
    actions: list[tuple[int, float, float]] = field(default_factory=list)
    steps: int | None = None
    length_delta: dict[str, int] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    nan_in: set[str] = field(default_factory=set)


def _features(
    rng: np.random.Generator,
    prototypes: np.ndarray,
    steps: int,
    duration_s: float,
    segments_s: list[tuple[int, float, float]],
) -> np.ndarray:
    """``(steps, D)`` float32: noise + the prototypes of the classes active at each step."""
    labels = labels_from_segments(np.asarray(segments_s, dtype=np.float64).reshape(-1, 3), steps, duration_s,
                                  prototypes.shape[0])
    noise = rng.normal(scale=0.5, size=(steps, prototypes.shape[1]))
    return (noise + labels.astype(np.float64) @ prototypes).astype(np.float32)


def _write_modality(
    path: Path, video: FixtureVideo, modality: str, feats: np.ndarray, *, i3d_shape: bool = False
) -> None:
    if modality in video.missing:
        return
    delta = video.length_delta.get(modality, 0)
    if delta > 0:
        feats = np.concatenate([feats, feats[-1:].repeat(delta, axis=0)])
    elif delta < 0:
        feats = feats[:delta]
    feats = feats.copy()
    if modality in video.nan_in:
        feats[len(feats) // 2, 0] = np.nan
    if i3d_shape:
        feats = feats.reshape(feats.shape[0], 1, 1, feats.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)


def _ids(rng: np.random.Generator, count: int, length: int = 5) -> list[str]:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    ids: list[str] = []
    while len(ids) < count:
        vid = "".join(rng.choice(alphabet, size=length))
        if vid not in ids:
            ids.append(vid)
    return ids


def _random_actions(
    rng: np.random.Generator, duration: float, num_classes: int, count: int, *, decimals: int | None, base: int = 0
) -> list[tuple[int, float, float]]:
    """Well-formed actions strictly inside ``[0, duration]`` (start < end after rounding)."""
    actions = []
    for _ in range(count):
        start = rng.uniform(0, duration * 0.7)
        end = rng.uniform(start + duration * 0.1, duration)
        if decimals is None:
            start, end = float(math.floor(start)), float(math.floor(end))
        else:
            start, end = round(start, decimals), round(end, decimals)
        actions.append((int(rng.integers(num_classes)) + base, start, min(end, duration)))
    return actions


# ------------------------------------------------------------------------- Charades

def charades_steps(length: float) -> int:
    """I3D steps of a Charades video: ``ceil(round(24 L) / 8) - 1``."""
    return max(math.ceil(round(24 * length) / 8) - 1, 1)


def charades_plan(videos: int = 6, seed: int = 0) -> list[FixtureVideo]:
    """Clean Charades videos: 2/3 training, durations 10-35 s (2 decimals), 0-4 actions."""
    rng = np.random.default_rng(seed)
    plan = []
    for k, vid in enumerate(_ids(rng, videos)):
        duration = round(float(rng.uniform(10, 35)), 2)
        count = 0 if k % 4 == 3 else int(rng.integers(1, 5))
        actions = _random_actions(rng, duration, CHARADES_CLASSES, count, decimals=2)
        plan.append(FixtureVideo(vid, "testing" if k % 3 == 2 else "training", duration, actions))
    return plan


def _charades_actions_field(actions: list[tuple[int, float, float]]) -> str:
    return ";".join(f"c{cls:03d} {start:.2f} {end:.2f}" for cls, start, end in actions)


def write_charades_raw(
    directory: Path, plan: list[FixtureVideo], *, feature_dim: int = 16, seed: int = 0
) -> Path:
    """Charades_v1_{train,test}.csv, Charades_v1_classes.txt, rgb/ (T,1,1,D) and flow/ (T,D)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    prototypes = rng.normal(size=(CHARADES_CLASSES, feature_dim))
    with (directory / "Charades_v1_classes.txt").open("w") as handle:
        for c in range(CHARADES_CLASSES):
            handle.write(f"c{c:03d} Invented action number {c}\n")
    for subset, name in (("training", "Charades_v1_train.csv"), ("testing", "Charades_v1_test.csv")):
        with (directory / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CHARADES_COLUMNS)
            for k, video in enumerate(v for v in plan if v.subset == subset):
                description = "A person walks in, opens a door, and \"waves\"."
                if k == 0:
                    description += "\nThen they sit down, tired."  # a quoted field spanning two lines
                writer.writerow([
                    video.video_id, f"S{k:03d}", "Kitchen", "6", "7", "Yes",
                    "Someone holds a cup, then laughs.", "cup;door", description,
                    _charades_actions_field(video.actions), f"{video.duration:.2f}",
                ])
    for video in plan:
        steps = video.steps or charades_steps(video.duration)
        segments = [(c, s, e) for c, s, e in video.actions]
        rgb = _features(rng, prototypes, steps, video.duration, segments)
        flow = _features(rng, prototypes * 0.5, steps, video.duration, segments)
        _write_modality(directory / "rgb" / f"{video.video_id}.npy", video, "rgb", rgb, i3d_shape=True)
        _write_modality(directory / "flow" / f"{video.video_id}.npy", video, "flow", flow)
    return directory


def make_charades_raw(directory: Path, *, videos: int = 6, feature_dim: int = 16, seed: int = 0) -> Path:
    """A complete clean Charades RAW directory with ``videos`` videos."""
    return write_charades_raw(directory, charades_plan(videos, seed), feature_dim=feature_dim, seed=seed)


# ------------------------------------------------------------------------------ TSU

def tsu_plan(videos: int = 6, seed: int = 0) -> list[FixtureVideo]:
    """Clean TSU videos: ids like P03T07C02, 800-2400 frames, 1-5 actions in frames."""
    rng = np.random.default_rng(seed)
    plan = []
    for k in range(videos):
        vid = f"P{k + 1:02d}T{int(rng.integers(1, 20)):02d}C{int(rng.integers(1, 8)):02d}"
        frames = int(rng.integers(800, 2400))
        actions = _random_actions(rng, frames, TSU_CLASSES, int(rng.integers(1, 6)), decimals=None)
        plan.append(FixtureVideo(vid, "testing" if k % 3 == 2 else "training", frames, actions))
    return plan


def _tsu_json(plan: list[FixtureVideo], swap_subsets: bool = False) -> str:
    flip = {"training": "testing", "testing": "training"}
    return json.dumps({
        v.video_id: {
            "subset": flip[v.subset] if swap_subsets else v.subset,
            "duration": int(v.duration),
            "actions": [[int(c), int(s), int(e)] for c, s, e in v.actions],
        }
        for v in plan
    })


def write_tsu_raw(directory: Path, plan: list[FixtureVideo], *, feature_dim: int = 16, seed: int = 0) -> Path:
    """smarthome_CS_51.json, smarthome_CV_51.json (the same videos, subsets swapped),
    rgb/ (T,1,1,D) with T = frames // 16, pose/ (T', D/2) with T' = frames // 8."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "smarthome_CS_51.json").write_text(_tsu_json(plan))
    (directory / "smarthome_CV_51.json").write_text(_tsu_json(plan, swap_subsets=True))
    rng = np.random.default_rng(seed + 1)
    pose_dim = max(4, feature_dim // 2)
    prototypes = rng.normal(size=(TSU_CLASSES, feature_dim))
    pose_prototypes = rng.normal(size=(TSU_CLASSES, pose_dim))
    for video in plan:
        seconds = video.duration / TSU_FPS
        segments = [(c, s / TSU_FPS, e / TSU_FPS) for c, s, e in video.actions]
        steps = video.steps or max(int(video.duration) // 16, 1)
        pose_steps = max(int(video.duration) // 8, 1)
        rgb = _features(rng, prototypes, steps, seconds, segments)
        pose = _features(rng, pose_prototypes, pose_steps, seconds, segments)
        _write_modality(directory / "rgb" / f"{video.video_id}.npy", video, "rgb", rgb, i3d_shape=True)
        _write_modality(directory / "pose" / f"{video.video_id}.npy", video, "pose", pose)
    return directory


def make_tsu_raw(directory: Path, *, videos: int = 6, feature_dim: int = 16, seed: int = 0) -> Path:
    """A complete clean TSU RAW directory (CS and CV annotation files)."""
    return write_tsu_raw(directory, tsu_plan(videos, seed), feature_dim=feature_dim, seed=seed)


# -------------------------------------------------------------------------- PKU-MMD

def pku_plan(videos: int = 6, seed: int = 0) -> list[FixtureVideo]:
    """Clean PKU-MMD videos: ids 00NN-L/M/R, 160-320 frames, 1-4 labels (1-based)."""
    rng = np.random.default_rng(seed)
    plan = []
    for k in range(videos):
        vid = f"{k // 3 + 1:04d}-{'LMR'[k % 3]}"
        frames = int(rng.integers(160, 320))
        actions = _random_actions(rng, frames, PKU_CLASSES, int(rng.integers(1, 5)), decimals=None, base=1)
        plan.append(FixtureVideo(vid, "testing" if k % 3 == 2 else "training", frames, actions))
    return plan


def pku_skeleton(rng: np.random.Generator, frames: int, *, second_person: bool) -> np.ndarray:
    """``(frames, 150)`` plausible skeleton: a fixed body shape moving along a path."""
    body = rng.normal(scale=0.3, size=(25, 3))
    body[0] = 0.0
    path = np.cumsum(rng.normal(scale=0.01, size=(frames, 3)), axis=0) + np.array([0.0, 0.0, 3.0])
    person1 = path[:, None, :] + body[None] + rng.normal(scale=0.005, size=(frames, 25, 3))
    person2 = person1 + np.array([0.8, 0.0, 0.2]) if second_person else np.zeros_like(person1)
    return np.concatenate([person1.reshape(frames, 75), person2.reshape(frames, 75)], axis=1)


def write_split_file(path: Path, training: list[str], validation: list[str], per_line: int = 4) -> None:
    """The release layout: header lines, comma-separated ids wrapped every ``per_line``."""
    def block(ids: list[str]) -> str:
        rows = [", ".join(ids[i:i + per_line]) for i in range(0, len(ids), per_line)]
        return ",\n".join(rows) + "\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Training videos: \n" + block(training) + "Validataion videos: \n" + block(validation))


def write_skeleton_file(path: Path, skeleton: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, skeleton, fmt="%.6f", delimiter=" ")


def write_pku_raw(
    directory: Path,
    plan: list[FixtureVideo],
    *,
    feature_dim: int = 16,
    seed: int = 0,
    skeletons: dict[str, np.ndarray] | None = None,
) -> Path:
    """Label/, Skeleton/ (one line per frame), Split/cross-subject.txt and cross-view.txt
    (cross-view swaps the lists), rgb/ (T, D) with T = frames // 8. ``skeletons`` may give
    a video's ``(frames, 150)`` skeleton explicitly."""
    directory = Path(directory)
    rng = np.random.default_rng(seed + 1)
    prototypes = rng.normal(size=(PKU_CLASSES, feature_dim))
    train = [v.video_id for v in plan if v.subset == "training"]
    test = [v.video_id for v in plan if v.subset == "testing"]
    write_split_file(directory / "Split" / "cross-subject.txt", train, test)
    write_split_file(directory / "Split" / "cross-view.txt", test, train)
    for k, video in enumerate(plan):
        frames = int(video.duration)
        if "label" not in video.missing:
            (directory / "Label").mkdir(parents=True, exist_ok=True)
            (directory / "Label" / f"{video.video_id}.txt").write_text(
                "".join(f"{c},{int(s)},{int(e)},{1 + (i % 2)}\n" for i, (c, s, e) in enumerate(video.actions))
            )
        if "skeleton" not in video.missing:
            skeleton = (skeletons or {}).get(video.video_id)
            if skeleton is None:
                skeleton = pku_skeleton(rng, frames, second_person=bool(k % 2))
            write_skeleton_file(directory / "Skeleton" / f"{video.video_id}.txt", skeleton)
        steps = video.steps or max(frames // PKU_FRAMES_PER_STEP, 1)
        segments = [(c - 1, s / PKU_FPS, e / PKU_FPS) for c, s, e in video.actions]
        rgb = _features(rng, prototypes, steps, frames / PKU_FPS, segments)
        _write_modality(directory / "rgb" / f"{video.video_id}.npy", video, "rgb", rgb)
    return directory


def make_pku_mmd_raw(directory: Path, *, videos: int = 6, feature_dim: int = 16, seed: int = 0) -> Path:
    """A complete clean PKU-MMD RAW directory (both split files)."""
    return write_pku_raw(directory, pku_plan(videos, seed), feature_dim=feature_dim, seed=seed)


# ---------------------------------------------------------------------- MultiTHUMOS

def multithumos_steps(duration: float) -> int:
    return max(int(duration * MULTITHUMOS_STEPS_PER_SECOND), 1)


def multithumos_plan(videos: int = 6, seed: int = 0) -> list[FixtureVideo]:
    """Clean MultiTHUMOS videos: THUMOS-style ids, 20-60 s, 1-5 actions, 1-based classes."""
    rng = np.random.default_rng(seed)
    plan = []
    for k in range(videos):
        subset = "testing" if k % 3 == 2 else "training"
        kind = "test" if subset == "testing" else "validation"
        vid = f"video_{kind}_{int(rng.integers(1, 10**7)):07d}"
        duration = round(float(rng.uniform(20, 60)), 2)
        actions = _random_actions(rng, duration, MULTITHUMOS_CLASSES, int(rng.integers(1, 6)), decimals=1, base=1)
        plan.append(FixtureVideo(vid, subset, duration, actions))
    return plan


def write_multithumos_raw(
    directory: Path, plan: list[FixtureVideo], *, feature_dim: int = 16, seed: int = 0
) -> Path:
    """multithumos.json (1-based classes), class_list.txt ("<id> <name>"), rgb/ and flow/."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "multithumos.json").write_text(json.dumps({
        v.video_id: {"subset": v.subset, "duration": v.duration, "actions": [list(a) for a in v.actions]}
        for v in plan
    }))
    (directory / "class_list.txt").write_text(
        "".join(f"{c} InventedClass{c}\n" for c in range(1, MULTITHUMOS_CLASSES + 1))
    )
    rng = np.random.default_rng(seed + 1)
    prototypes = rng.normal(size=(MULTITHUMOS_CLASSES, feature_dim))
    for video in plan:
        steps = video.steps or multithumos_steps(video.duration)
        segments = [(c - 1, s, e) for c, s, e in video.actions]
        rgb = _features(rng, prototypes, steps, video.duration, segments)
        flow = _features(rng, prototypes * 0.5, steps, video.duration, segments)
        _write_modality(directory / "rgb" / f"{video.video_id}.npy", video, "rgb", rgb, i3d_shape=True)
        _write_modality(directory / "flow" / f"{video.video_id}.npy", video, "flow", flow)
    return directory


def make_multithumos_raw(directory: Path, *, videos: int = 6, feature_dim: int = 16, seed: int = 0) -> Path:
    """A complete clean MultiTHUMOS RAW directory."""
    return write_multithumos_raw(directory, multithumos_plan(videos, seed), feature_dim=feature_dim, seed=seed)
