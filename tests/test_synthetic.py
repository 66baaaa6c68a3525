"""Synthetic benchmark generator (data_prep/synthetic.py, DESIGN.md §6)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from data_prep import synthetic
from data_prep.synthetic import (
    PRESETS,
    SyntheticConfig,
    _blur,
    _prototypes,
    config,
    confusable_pairs,
    generate,
    person_classes,
    world_v2,
)
from data_prep.synthetic import TINY as SYNTHETIC_SMALL
from kd_detect.data.format import FeatureFile, labels_from_segments
from kd_detect.data.validate import validate_file


def _arrays(path) -> dict:
    out = {}
    with h5py.File(path, "r") as h5:
        for vid, group in h5["videos"].items():
            for name, ds in group.items():
                out[(vid, name)] = ds[()]
            out[(vid, "duration")] = group.attrs["duration"]
            out[(vid, "subset")] = group.attrs["subset"]
    return out


def test_same_seed_identical_different_seed_different(tmp_path, synthetic_h5):
    again = generate(tmp_path / "again.h5", seed=0, **SYNTHETIC_SMALL)
    a, b = _arrays(synthetic_h5), _arrays(again)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    other = _arrays(generate(tmp_path / "other.h5", seed=1, **SYNTHETIC_SMALL))
    assert not np.array_equal(a[("syn_00000", "rgb")], other.get(("syn_00000", "rgb")))
    differing = [k for k in a if k[1] == "segments" and not np.array_equal(a[k], other[k])]
    assert len(differing) >= len(a) // 10  # segments too, not just the noise


def test_file_passes_validator(synthetic_h5):
    report = validate_file(synthetic_h5)
    assert report.problems == []
    assert report.summary["videos"] == SYNTHETIC_SMALL["videos"]


def test_sizes_and_subsets(synthetic_h5):
    ff = FeatureFile(synthetic_h5)
    cfg = SYNTHETIC_SMALL
    assert len(ff.video_ids) == cfg["videos"]
    assert ff.num_classes == cfg["classes"] and len(set(ff.classes)) == cfg["classes"]
    assert ff.modalities == ["rgb", "flow", "pose"]
    assert ff.modality_dims == {"rgb": cfg["rgb_dim"], "flow": cfg["flow_dim"], "pose": cfg["pose_dim"]}
    lengths = np.array(list(ff.lengths.values()))
    assert lengths.min() >= cfg["min_steps"] and lengths.max() <= cfg["max_steps"]
    assert len(set(lengths.tolist())) > 3  # lengths vary
    assert len(ff.videos_in("testing")) == 4 and len(ff.videos_in("validation")) == 2
    assert len(ff.videos_in("training")) == 10
    step = SyntheticConfig().step_seconds
    for vid in ff.video_ids:
        assert math.isclose(ff.durations[vid], ff.lengths[vid] * step)
    with h5py.File(synthetic_h5, "r") as h5:
        assert h5["videos/syn_00000/rgb"].dtype == np.float16
        assert h5.attrs["generator"] == "data_prep.synthetic"


def test_dtype_and_size_options(make_synthetic_h5):
    path = make_synthetic_h5(seed=3, dtype="float32", videos=5, classes=3, min_steps=10, max_steps=10, rgb_dim=3)
    ff = FeatureFile(path)
    assert len(ff.video_ids) == 5 and ff.num_classes == 3 and set(ff.lengths.values()) == {10}
    assert ff.modality_dims["rgb"] == 3
    assert ff.record(ff.video_ids[0]).features["rgb"].dtype == np.float32
    assert validate_file(path).problems == []


def test_labels_follow_strict_rule_and_overlap(synthetic_h5):
    ff = FeatureFile(synthetic_h5)
    overlap = background = 0
    for vid in ff.video_ids:
        rec = ff.record(vid)
        want = labels_from_segments(rec.segments, rec.num_steps, rec.duration, ff.num_classes)
        np.testing.assert_array_equal(rec.labels, want, err_msg=vid)
        active = rec.labels.sum(1)
        overlap += int((active >= 2).sum())
        background += int((active == 0).sum())
        assert (rec.segments[:, 1] >= 0).all() and (rec.segments[:, 2] <= rec.duration + 1e-9).all()
    assert overlap > 0, "multi-label overlap never happens"
    assert background > 0, "no background steps"


def test_features_carry_the_labels(make_synthetic_h5):
    """Flow (sharp) separates active from inactive steps along each class's prototype."""
    path = make_synthetic_h5(seed=0, videos=24, classes=8, flow_noise=0.2, flow_drift=0.0, boundary_amp=0.0,
                             preset="v1")
    cfg = config("v1", **{**SYNTHETIC_SMALL, "videos": 24, "classes": 8})
    protos = _prototypes(cfg, 0)
    ff = FeatureFile(path)
    on, off = [], []
    for vid in ff.video_ids:
        rec = ff.record(vid)
        proj = rec.features["flow"].astype(np.float64) @ protos.flow.T  # (T, C)
        on.append(proj[rec.labels == 1])
        off.append(proj[(rec.labels == 0) & (rec.labels.sum(1, keepdims=True) == 0)])
    assert np.concatenate(on).mean() > 0.25 > abs(np.concatenate(off).mean())


def test_class_structure_v1():
    cfg = config("v1", classes=14)
    protos = _prototypes(cfg, 0)
    pairs = confusable_pairs(14)
    assert pairs == [(0, 1), (2, 3), (4, 5)]
    for a, b in pairs:
        assert math.isclose(protos.rgb[a] @ protos.rgb[b], math.sqrt(1 - cfg.confusion**2), rel_tol=1e-9)
        assert abs(protos.flow[a] @ protos.flow[b]) < 0.9  # flow tells them apart
    person = person_classes(14)
    assert 0 < len(person) < 14
    norms = np.linalg.norm(protos.pose, axis=1)
    assert np.allclose(norms[person], 1.0) and np.allclose(np.delete(norms, person), 0.0)
    np.testing.assert_allclose(np.linalg.norm(protos.rgb, axis=1), 1.0)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert synthetic.main(["--out", str(out), "--seed", "2", "--videos", "4", "--classes", "3",
                           "--min-steps", "8", "--max-steps", "12", "--dtype", "float32"]) == 0
    ff = FeatureFile(out)
    assert len(ff.video_ids) == 4 and ff.num_classes == 3
    with pytest.raises(SystemExit) as err:
        synthetic.main(["--out", str(tmp_path / "bad.h5"), "--min-steps", "20", "--max-steps", "10"])
    assert err.value.code == 2
    assert "min_steps <= max_steps" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()


def test_rgb_motion_puts_a_weak_copy_of_the_motion_signal_into_rgb(make_synthetic_h5):
    """v1: ``rgb_motion`` adds the flow stream's sharp motion signal to RGB through a fixed
    projection; 0 (v1's default) leaves RGB exactly as before."""
    base, moved = make_synthetic_h5(preset="v1"), make_synthetic_h5(rgb_motion=2.0, preset="v1")
    with h5py.File(base) as a, h5py.File(moved) as b:
        vid = next(iter(a["videos"]))
        ra, rb = a["videos"][vid]["rgb"][()].astype(np.float64), b["videos"][vid]["rgb"][()].astype(np.float64)
        flow = a["videos"][vid]["flow"][()]
        np.testing.assert_array_equal(flow, b["videos"][vid]["flow"][()])  # other streams untouched
    added = rb - ra
    assert np.abs(added).max() > 0.1
    # the added part lives in a flow_dim-dimensional subspace of RGB (a fixed projection)
    sv = np.linalg.svd(added, compute_uv=False)
    assert (sv > 1e-2 * sv[0]).sum() <= flow.shape[1]


def test_annotation_noise_touches_only_training_labels(make_synthetic_h5):
    """``label_drop`` / ``label_jitter`` corrupt the training subset's annotations only: the
    features (driven by the true activity) and the evaluation subsets stay bit-identical."""
    opts = dict(videos=40, preset="v1")
    clean = _arrays(make_synthetic_h5(**opts))
    noisy = _arrays(make_synthetic_h5(label_drop=0.3, label_jitter=0.25, **opts))
    assert clean.keys() == noisy.keys()
    changed_training = 0
    for key in clean:
        vid, field = key
        if field in ("segments", "labels") and clean[(vid, "subset")] == "training":
            changed_training += not np.array_equal(clean[key], noisy[key])
            continue
        np.testing.assert_array_equal(clean[key], noisy[key], err_msg=str(key))
    assert changed_training > 10
    n_clean = sum(len(clean[k]) for k in clean if k[1] == "segments" and clean[(k[0], "subset")] == "training")
    n_noisy = sum(len(noisy[k]) for k in noisy if k[1] == "segments" and noisy[(k[0], "subset")] == "training")
    assert 0.5 * n_clean < n_noisy < 0.9 * n_clean  # ~30 % dropped (plus a few jittered away)


def test_annotation_noise_extremes(make_synthetic_h5):
    """Dropping everything leaves the training videos unlabelled."""
    dropped = _arrays(make_synthetic_h5(label_drop=1.0, videos=24))
    training = [k[0] for k in dropped if k[1] == "subset" and dropped[k] == "training"]
    assert training
    for vid in training:
        assert dropped[(vid, "segments")].shape == (0, 3)
        assert not dropped[(vid, "labels")].any()


def test_annotation_jitter_moves_each_boundary_within_its_bound():
    """Jitter keeps every instance's class and moves each boundary by at most
    ``label_jitter`` x the instance's length, clipped to the video."""
    cfg = SyntheticConfig(label_drop=0.0, label_jitter=0.2)
    segments = np.array([[3, 1.0, 11.0], [0, 0.0, 2.0], [5, 18.0, 20.0], [3, 5.0, 45.0]])
    rng = np.random.default_rng(0)
    moved = []
    for _ in range(50):
        out = synthetic._annotation_noise(cfg, segments, 20.0, rng)
        assert out.shape == segments.shape  # nothing dropped: each annotated length stays > 0
        np.testing.assert_array_equal(out[:, 0], segments[:, 0])
        bound = 0.2 * (segments[:, 2] - segments[:, 1])[:, None]
        assert (np.abs(out[:, 1:] - np.clip(segments[:, 1:], 0, 20.0)) <= bound + 1e-12).all()
        assert (out[:, 1:] >= 0).all() and (out[:, 1:] <= 20.0).all()
        moved.append(out[:, 1:] - segments[:, 1:])
    assert np.abs(np.array(moved)).max() > 0.5  # it does move them


@pytest.mark.parametrize("option, value", [("label_drop", 1.5), ("label_drop", -0.1), ("label_jitter", -1.0)])
def test_annotation_noise_rejects_bad_values(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        generate(tmp_path / "bad.h5", **{**SYNTHETIC_SMALL, option: value})
    assert not (tmp_path / "bad.h5").exists()


# ------------------------------------------------------------------ presets and v2
def _fingerprint(path) -> dict:
    """What identifies a generated world across machines.

    ``exact``: sha256 of every attr (the ``generator_*`` record of the command left out; float
    attrs to 10 decimals), every integer array (the labels) and every array's name, dtype and shape, in a fixed order. For each
    float field (features, segment times): its element count, sum, sum of squares and a sum with
    fixed random signs, in float64 over all videos. Floats are not hashed: BLAS kernels (the QR of
    the prototypes) and libm differ in the last place from one CPU to another, and a last-place
    difference can flip a float16 rounding; any real change of the draws moves these sums by
    orders of magnitude more than a few flipped roundings do (see ``_same_world``).
    """
    import hashlib

    h = hashlib.sha256()
    floats: dict[str, list] = {}
    with h5py.File(path, "r") as f:

        def attrs(obj):
            for k in sorted(a for a in obj.attrs if not a.startswith("generator_")):
                v = np.asarray(obj.attrs[k])
                h.update(k.encode())
                h.update(repr((np.round(v, 10) if v.dtype.kind == "f" else v).tolist()).encode())

        attrs(f)
        for vid in sorted(f["videos"]):
            group = f["videos"][vid]
            h.update(vid.encode())
            attrs(group)
            for name in sorted(group):
                a = group[name][()]
                h.update(f"{name}{a.dtype}{a.shape}".encode())
                if a.dtype.kind == "f":
                    floats.setdefault(name, []).append(a.astype(np.float64).ravel())
                else:
                    h.update(np.ascontiguousarray(a).tobytes())
    out: dict = {"exact": h.hexdigest()}
    for name, parts in sorted(floats.items()):
        x = np.concatenate(parts)
        signs = np.where(np.random.default_rng(0).random(x.size) < 0.5, -1.0, 1.0)
        out[name] = [x.size, float(x.sum()), float((x * x).sum()), float((signs * x).sum())]
    return out


def _same_world(got: dict, want: dict) -> bool:
    """Exact part equal, and each float sum within 0.004 per element (about a float16 step at 4)
    times 1 % of the elements: a few hundred last-place flips pass, a new draw does not."""
    if got.keys() != want.keys() or got["exact"] != want["exact"]:
        return False
    for name in want.keys() - {"exact"}:
        n, *sums = want[name]
        if got[name][0] != n or not np.allclose(got[name][1:], sums, rtol=0, atol=0.004 * 0.01 * n + 1e-9):
            return False
    return True


def test_fingerprint_tells_a_new_draw_from_last_place_noise(tmp_path):
    path = generate(tmp_path / "a.h5", seed=0, **SYNTHETIC_SMALL)
    want = _fingerprint(path)
    assert _same_world(_fingerprint(path), want)
    # flip the float16 rounding of 0.5 % of the RGB entries by one step: still the same world
    with h5py.File(path, "r+") as f:
        for vid in f["videos"]:
            rgb = f["videos"][vid]["rgb"]
            a = rgb[()]
            flat = a.ravel()
            idx = np.random.default_rng(1).choice(flat.size, max(1, flat.size // 200), replace=False)
            flat[idx] = np.nextafter(flat[idx], np.float16(np.inf))
            rgb[...] = a
    assert _same_world(_fingerprint(path), want)
    assert not _same_world(_fingerprint(generate(tmp_path / "b.h5", seed=1, **SYNTHETIC_SMALL)), want)
    # a world that differs in RGB only (the v2.0 preset) is told apart too
    assert not _same_world(_fingerprint(generate(tmp_path / "c.h5", seed=0, preset="v2.0", **SYNTHETIC_SMALL)), want)


# Fingerprints of draws made by the generator before v2 existed (commit de75d2b, where these
# options were the default world): the v1 preset must reproduce them. (Taken as exact sha256
# digests first; their float part moved to sums when a new CPU changed a last place.)
V1_TINY_SEED0 = {
    "exact": "e16cff94b7c7d11a341718deb6b8a3d10bd2b5790395fe86698237d5b430d6ba",
    "flow": [6000, 199.20729160308838, 4752.355907200827, 169.83012199401855],
    "pose": [6000, -35.03568923473358, 1334.9773109614432, -0.6715356111526489],
    "rgb": [12000, -92.41559600830078, 3321.9523369452436, 52.290175914764404],
    "segments": [96, 601.7716291208078, 6689.117864958145, 150.64355357749218],
}
V1_TINY_SEED3_NOISY = {
    "exact": "16c64ba9ecdbc00e712ec863e2e08fbaa45b3cefb74c99866f433fec3b5c84b4",
    "flow": [5480, 259.5599184036255, 3834.422246011267, 89.71638584136963],
    "pose": [5480, -111.15917307138443, 930.1561979831962, -4.982847988605499],
    "rgb": [10960, 8.990473747253418, 2925.2274551870432, -3.0663363933563232],
    "segments": [60, 327.5480287412343, 3289.398708987463, 73.62737867272318],
}


def test_v1_preset_reproduces_the_first_generator(tmp_path):
    assert _same_world(_fingerprint(generate(tmp_path / "a.h5", seed=0, preset="v1", **SYNTHETIC_SMALL)),
                       V1_TINY_SEED0)
    noisy = generate(tmp_path / "b.h5", seed=3, preset="v1", label_drop=0.3, label_jitter=0.25, rgb_motion=0.5,
                     **SYNTHETIC_SMALL)
    assert _same_world(_fingerprint(noisy), V1_TINY_SEED3_NOISY)


# Fingerprints of v2 draws made before its recalibration (commit c5cf192, revision 1): the v2.0
# preset must reproduce them, so earlier figures stay reproducible.
V2_0_TINY_SEED0 = {
    "exact": "9c6ca1c77112ca6f295647fe34bd97de9babfbe2eae2851aee931bc57c37242b",
    "flow": [5176, 374.06574189662933, 3770.182785133341, 31.75949513912201],
    "pose": [5176, -476.8623339533806, 1894.82114506971, 7.5681803822517395],
    "rgb": [10352, -241.551808655262, 3512.993927542285, 22.399185121059418],
    "segments": [84, 484.46684665464534, 4531.532771714017, 31.100331430480345],
}
V2_0_TINY_SEED5 = {
    "exact": "94033b8363b860195c80667d7e341c3356f11bff568d08c35b947cc7dffdc9d1",
    "flow": [5968, 456.502852499485, 4801.483329909738, 83.79724210500717],
    "pose": [5968, -30.398022532463074, 2231.1866701400404, 50.0037237405777],
    "rgb": [11936, -449.71427315473557, 3582.6285022047296, -66.4083361029625],
    "segments": [99, 617.8561355626342, 6584.029961411793, 148.9547547250421],
}


def test_v2_0_preset_reproduces_the_first_calibration_and_v2_differs_only_in_rgb(tmp_path):
    first = generate(tmp_path / "a.h5", seed=0, preset="v2.0", **SYNTHETIC_SMALL)
    assert _same_world(_fingerprint(first), V2_0_TINY_SEED0)
    assert _same_world(_fingerprint(generate(tmp_path / "b.h5", seed=5, preset="v2.0", **SYNTHETIC_SMALL)),
                       V2_0_TINY_SEED5)
    today = generate(tmp_path / "c.h5", seed=0, **SYNTHETIC_SMALL)
    with h5py.File(first, "r") as old, h5py.File(today, "r") as new:
        assert old.attrs["generator_revision"] == new.attrs["generator_revision"] == 2  # written by today's code
        for vid in old["videos"]:
            for name in ("flow", "pose", "labels", "segments"):  # the recalibration touched RGB only
                np.testing.assert_array_equal(old["videos"][vid][name][()], new["videos"][vid][name][()])
            assert not np.array_equal(old["videos"][vid]["rgb"][()], new["videos"][vid]["rgb"][()])


def test_v2_is_the_default_and_deterministic_to_the_byte(tmp_path, synthetic_h5):
    import hashlib

    again = generate(tmp_path / "again.h5", seed=0, **SYNTHETIC_SMALL)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(synthetic_h5.read_bytes()).digest()
    with h5py.File(synthetic_h5, "r") as h5:
        assert h5.attrs["world"] == "v2"
    assert SyntheticConfig().world == "v2" and config().world == "v2"
    v1 = _fingerprint(generate(tmp_path / "v1.h5", seed=0, preset="v1", **SYNTHETIC_SMALL))
    assert not _same_world(v1, _fingerprint(synthetic_h5))


def test_unknown_preset_or_world_is_refused(tmp_path):
    with pytest.raises(ValueError, match="preset must be one of"):
        generate(tmp_path / "x.h5", preset="v3", **SYNTHETIC_SMALL)
    with pytest.raises(ValueError, match="world must be one of"):
        generate(tmp_path / "x.h5", world="v9", **SYNTHETIC_SMALL)
    with pytest.raises(ValueError, match="min_phases <= max_phases"):
        generate(tmp_path / "x.h5", min_phases=3, max_phases=2, **SYNTHETIC_SMALL)
    assert not (tmp_path / "x.h5").exists()


def test_v2_classes_are_phase_sequences_shared_across_classes():
    cfg = config()
    world = world_v2(cfg, 0)
    counts = np.zeros(cfg.phases, dtype=int)
    for ph in world.class_phases:
        assert cfg.min_phases <= len(ph) <= cfg.max_phases
        assert len(set(ph.tolist())) == len(ph)  # a phase at most once per class
        counts[ph] += 1
    assert (counts >= 2).sum() >= cfg.phases // 2  # most phases serve several classes
    sets = {frozenset(ph.tolist()) for ph in world.class_phases}
    assert len(sets) == cfg.classes  # but no two classes are the same set of phases
    for ph, share in zip(world.class_phases, world.class_shares):
        assert share.shape == ph.shape and math.isclose(share.sum(), 1.0)


def test_v2_long_tail_and_rare_classes_reuse_frequent_phases(tmp_path):
    cfg = config()
    world = world_v2(cfg, 0)
    prior = np.sort(world.prior)[::-1]
    np.testing.assert_allclose(prior / prior[0], (1.0 + np.arange(cfg.classes)) ** -cfg.tail)
    assert world.frequent.sum() == math.ceil(cfg.classes / 2)
    assert world.prior[world.frequent].min() > world.prior[~world.frequent].max()
    frequent_phases = set(np.concatenate([world.class_phases[k] for k in np.flatnonzero(world.frequent)]).tolist())
    for k in np.flatnonzero(~world.frequent):
        assert set(world.class_phases[k].tolist()) <= frequent_phases
    for a, b in world.pairs:  # a confusable pair: a frequent and a rare class, one look, different phases
        assert world.frequent[a] and not world.frequent[b]
        assert math.isclose(world.appearance[a] @ world.appearance[b], math.sqrt(1 - cfg.confusion**2))
        assert set(world.class_phases[a].tolist()) != set(world.class_phases[b].tolist())
    # the drawn instances follow the tail; the file records the structure, labels name classes only
    path = generate(tmp_path / "v2.h5", seed=0, videos=120, label_drop=0.0, label_jitter=0.0, rgb_dim=8, flow_dim=8,
                    pose_dim=4)
    ff = FeatureFile(path)
    count = np.zeros(cfg.classes)
    for vid in ff.video_ids:
        np.add.at(count, ff.segments(vid)[:, 0].astype(int), 1)
    order = np.argsort(-world.prior)
    assert count[order[:3]].sum() > 4 * count[order[-3:]].sum()
    assert ff.num_classes == cfg.classes
    with h5py.File(path, "r") as h5:
        stored = h5.attrs["class_phases"]
        for k, ph in enumerate(world.class_phases):
            np.testing.assert_array_equal(stored[k][stored[k] >= 0], ph)
        np.testing.assert_array_equal(h5.attrs["confusable_pairs"], np.array(world.pairs).reshape(-1, 2))


def _v2_noiseless(tmp_path, name, **options):
    """A v2 draw whose flow is exactly the motion signal (no noise, no drift, no boundary spike)."""
    opts = dict(videos=12, flow_noise=0.0, flow_drift=0.0, boundary_amp=0.0, dtype="float32")
    return generate(tmp_path / name, seed=5, **{**opts, **options})


def test_v2_flow_shows_the_phases_sharply_and_rgb_weakly_and_blurred(tmp_path):
    """Flow = sum of the active phases' motion directions (a step-wise, sharp signal).
    RGB's extra term is ``rgb_motion * blur(flow, motion_blur) @ M`` exactly: weak and blurred."""
    cfg = config(flow_noise=0.0, flow_drift=0.0, boundary_amp=0.0)
    world = world_v2(cfg, 5)
    with_motion = FeatureFile(_v2_noiseless(tmp_path, "m.h5"))
    without = FeatureFile(_v2_noiseless(tmp_path, "n.h5", rgb_motion=0.0))
    phase_steps = 0
    for vid in with_motion.video_ids:
        a, b = with_motion.record(vid), without.record(vid)
        flow = a.features["flow"].astype(np.float64)
        np.testing.assert_array_equal(flow, b.features["flow"])
        # sharp: each step's flow is a non-negative combination of phase directions (least squares exact)
        coef, *_ = np.linalg.lstsq(world.phase_flow.T * world.strength, flow.T, rcond=None)
        np.testing.assert_allclose((world.phase_flow.T * world.strength) @ coef, flow.T, atol=1e-5)
        active = coef.T > 0.3
        phase_steps += int(active.any(1).sum())
        # phases appear only inside labelled actions (labels exact here: validation/testing, or noise off)
        if a.subset != "training":
            assert not active[a.labels.sum(1) == 0].any()
        added = a.features["rgb"].astype(np.float64) - b.features["rgb"]
        want = cfg.rgb_motion * _blur(flow, cfg.motion_blur) @ world.motion_to_rgb
        np.testing.assert_allclose(added, want, atol=1e-5)
        if np.abs(flow).max() > 0:
            # weak: smaller than what RGB shows of the class appearance and nuisances
            assert 0 < np.linalg.norm(added) < 0.5 * np.linalg.norm(b.features["rgb"])
            # blurred: smoother in time than the flow it copies
            rough = lambda x: np.mean(np.diff(x, axis=0) ** 2) / np.mean(x**2)  # noqa: E731
            assert rough(added) < rough(flow)
    assert phase_steps > 0


def test_v2_views_give_each_video_one_viewpoint_of_every_class_and_change_only_rgb(tmp_path):
    """``views`` V: every class has V unit appearances (the first is the one-view world's,
    confusable pairs as close in every view); a video shows each of its instances from one
    view, drawn per video; flow, pose and labels are those of the one-view world."""
    cfg = config(views=3)
    world = world_v2(cfg, 5)
    assert world.views.shape == (3, cfg.classes, cfg.rgb_dim)
    np.testing.assert_array_equal(world.views[0], world_v2(config(), 5).appearance)
    np.testing.assert_allclose(np.linalg.norm(world.views, axis=2), 1.0, atol=1e-12)
    for a, b in world.pairs:
        np.testing.assert_allclose(np.einsum("vd,vd->v", world.views[:, a], world.views[:, b]),
                                   math.sqrt(1 - cfg.confusion**2), atol=1e-12)
    # RGB without motion copy, nuisances, noise or per-instance variation: the views' appearances only
    quiet = dict(rgb_motion=0.0, scene=0.0, drift=0.0, rgb_noise=0.0, appearance_var=0.0)
    one = FeatureFile(_v2_noiseless(tmp_path, "one.h5", **quiet))
    three = FeatureFile(_v2_noiseless(tmp_path, "three.h5", views=3, **quiet))
    seen = set()
    for vid in three.video_ids:
        a, b = three.record(vid), one.record(vid)
        for name in ("flow", "pose"):
            np.testing.assert_array_equal(a.features[name], b.features[name])
        np.testing.assert_array_equal(a.labels, b.labels)
        rgb = a.features["rgb"].astype(np.float64)
        if np.abs(rgb).max() == 0:
            continue
        fits = []  # which view's class appearances span this video's RGB exactly
        for v in range(3):
            coef, *_ = np.linalg.lstsq(world.views[v].T, rgb.T, rcond=None)
            fits.append(np.abs(world.views[v].T @ coef - rgb.T).max())
        assert sum(f < 1e-5 for f in fits) == 1, fits
        seen.add(int(np.argmin(fits)))
    assert seen == {0, 1, 2}  # 12 videos: each view is used
    with pytest.raises(ValueError, match="views"):
        config(views=0)


def test_views_preset_is_v2_from_three_viewpoints_with_rgb_alone_changed(tmp_path):
    assert config("views") == config(views=3, rgb_amp=2.0) and config("views").world == "v2"
    views = FeatureFile(generate(tmp_path / "views.h5", seed=0, preset="views", **SYNTHETIC_SMALL))
    v2 = FeatureFile(generate(tmp_path / "v2.h5", seed=0, **SYNTHETIC_SMALL))
    assert views.video_ids == v2.video_ids
    for vid in views.video_ids:
        a, b = views.record(vid), v2.record(vid)
        assert a.subset == b.subset
        for name in ("flow", "pose"):
            np.testing.assert_array_equal(a.features[name], b.features[name])
        np.testing.assert_array_equal(a.labels, b.labels)
        assert not np.array_equal(a.features["rgb"], b.features["rgb"])


def test_v2_annotation_noise_only_in_training_at_the_configured_rates(tmp_path):
    """Validation/testing labels are exactly their segments, which are the clean ones; the
    training annotations lose ``label_drop`` of the instances and their boundaries move by
    ``U(-j, j) * length`` (mean |shift| = j/2 before clipping); features never change."""
    base = dict(videos=120, rgb_dim=8, flow_dim=8, pose_dim=4)  # small dims: fast; the labels are as at full size
    clean = _arrays(generate(tmp_path / "clean.h5", label_drop=0.0, label_jitter=0.0, **base))
    default = config()
    noisy = _arrays(generate(tmp_path / "noisy.h5", **base))  # the default: noisy training labels
    jittered = _arrays(generate(tmp_path / "jit.h5", label_drop=0.0, label_jitter=0.2, **base))
    n_clean = n_noisy = 0
    shifts = []
    for (vid, fieldname), value in clean.items():
        subset = clean[(vid, "subset")]
        if fieldname not in ("segments", "labels"):
            np.testing.assert_array_equal(value, noisy[(vid, fieldname)], err_msg=f"{vid} {fieldname}")
            continue
        if subset != "training":
            np.testing.assert_array_equal(value, noisy[(vid, fieldname)], err_msg=f"{vid} {fieldname}")
            if fieldname == "labels":
                seg = noisy[(vid, "segments")]
                want = labels_from_segments(seg, len(value), noisy[(vid, "duration")], value.shape[1])
                np.testing.assert_array_equal(noisy[(vid, "labels")], want)
            continue
        if fieldname == "segments":
            n_clean += len(value)
            n_noisy += len(noisy[(vid, fieldname)])
            moved = jittered[(vid, "segments")]
            inner = (value[:, 1] > 0) & (value[:, 2] < clean[(vid, "duration")])  # boundaries not clipped
            for cls, start, end in value[inner]:
                same = moved[moved[:, 0] == cls]  # the nearest annotation of the class is its own
                best = same[np.argmin(np.abs(same[:, 1] - start) + np.abs(same[:, 2] - end))]
                shifts.append(np.abs(best[1:] - (start, end)) / (end - start))
    assert n_clean > 250
    assert abs(n_noisy / n_clean - (1 - default.label_drop)) < 0.06  # (a few more lost to jitter)
    shifts = np.concatenate(shifts)
    assert (shifts > 0.2 + 1e-9).mean() < 0.02  # (the odd overlapping pair of one class is matched crosswise)
    assert abs(np.median(shifts) - 0.1) < 0.02  # U(0, 0.2): median 0.1


def test_v2_tiny_draw_passes_check(tmp_path):
    path = generate(tmp_path / "v2.h5", seed=1, **SYNTHETIC_SMALL)
    assert validate_file(path).problems == []


def test_help_describes_every_option_with_its_default(capsys):
    # the options v1 ignores are exactly the fields v1's generator never reads
    assert set(synthetic.V2_ONLY) == {"phases", "min_phases", "max_phases", "tail", "phase_spread",
                                      "appearance_var", "motion_blur", "views"}
    with pytest.raises(SystemExit) as err:
        synthetic.main(["--help"])
    assert err.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, value in vars(SyntheticConfig()).items():
        if name == "world":
            continue
        flag = f"--{name.replace('_', '-')}"
        assert flag in text
        v1 = "unused" if name in synthetic.V2_ONLY else PRESETS["v1"].get(name, value)
        assert f"v2 default: {value}; v1: {v1})" in text, name
    assert "(default: v2)" in text and "(default: 0)" in text and "default: None" not in text


def test_extra_training_videos_leave_the_world_and_the_held_out_videos_unchanged(make_synthetic_h5):
    """The RGB ceiling's file: ``extra_training`` adds training videos of the same world,
    and every video of the base file (split included) is byte-identical."""
    base, more = make_synthetic_h5(), make_synthetic_h5(extra_training=30)
    a, b = FeatureFile(base), FeatureFile(more)
    assert set(a.durations) < set(b.durations)
    added = sorted(set(b.durations) - set(a.durations))
    assert len(added) == 30 and {b.subsets[v] for v in added} == {"training"}
    assert all(b.subsets[v] == a.subsets[v] for v in a.durations)
    for v in a.durations:
        ra, rb = a.record(v), b.record(v)
        for m in ("rgb", "flow", "pose"):
            np.testing.assert_array_equal(ra.features[m], rb.features[m])
        np.testing.assert_array_equal(ra.labels, rb.labels)
    with pytest.raises(ValueError, match="extra_training must be >= 0"):
        config(extra_training=-1)
