"""Synthetic benchmark generator (data_prep/synthetic.py, DESIGN.md §6)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from data_prep import synthetic
from data_prep.synthetic import TINY as SYNTHETIC_SMALL
from data_prep.synthetic import SyntheticConfig, _prototypes, confusable_pairs, generate, person_classes
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
    path = make_synthetic_h5(seed=0, videos=24, classes=8, flow_noise=0.2, flow_drift=0.0, boundary_amp=0.0)
    cfg = SyntheticConfig(**{**SYNTHETIC_SMALL, "videos": 24, "classes": 8})
    protos = _prototypes(cfg, 0)
    ff = FeatureFile(path)
    on, off = [], []
    for vid in ff.video_ids:
        rec = ff.record(vid)
        proj = rec.features["flow"].astype(np.float64) @ protos.flow.T  # (T, C)
        on.append(proj[rec.labels == 1])
        off.append(proj[(rec.labels == 0) & (rec.labels.sum(1, keepdims=True) == 0)])
    assert np.concatenate(on).mean() > 0.25 > abs(np.concatenate(off).mean())


def test_class_structure():
    cfg = SyntheticConfig(classes=14)
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
    """``rgb_motion`` adds the flow stream's sharp motion signal to RGB through a fixed
    projection; 0 (the default) leaves RGB exactly as before."""
    import h5py

    base, moved = make_synthetic_h5(), make_synthetic_h5(rgb_motion=2.0)
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
    opts = dict(videos=40)
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
    cfg = SyntheticConfig(label_jitter=0.2)
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
