"""Linear probe (kd_detect.lab.probe): context stacking, ridge against a direct solve,
penalty selection on validation, and the test figure through FrameMAP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_detect.data.format import FeatureFile, FeatureFileError, VideoRecord, labels_from_segments, write_feature_file
from kd_detect.errors import UsageError
from kd_detect.lab import probe as P
from kd_detect.metrics import FrameMAP


def test_with_context_hand_computed():
    z = np.arange(1.0, 7.0).reshape(3, 2)  # rows [1 2] [3 4] [5 6]
    want = np.array([[0, 0, 1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 0, 0]], dtype=float)
    np.testing.assert_array_equal(P.with_context(z, 1), want)
    np.testing.assert_array_equal(P.with_context(z, 0), z)
    wide = P.with_context(z, 3)  # shifts of ±3 fall outside a 3-step video: all zero
    assert wide.shape == (3, 14) and not wide[:, :2].any() and not wide[:, -2:].any()
    np.testing.assert_array_equal(wide[:, 2:12], P.with_context(z, 2))
    with pytest.raises(ValueError, match="context"):
        P.with_context(z, -1)


def test_fit_ridge_matches_the_normal_equations():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 4)), (rng.random((50, 3)) > 0.5).astype(float)
    weights = P.fit_ridge(x, y, np.array([0.5, 20.0]))
    for w, lam in zip(weights, (0.5, 20.0)):
        direct = np.linalg.solve(x.T @ x + lam * np.eye(4), x.T @ (y - y.mean(0)))
        np.testing.assert_allclose(w, direct, rtol=1e-9, atol=1e-12)


def test_frame_ap_is_frame_map_of_the_scores():
    rng = np.random.default_rng(1)
    scores = [rng.standard_normal((7, 3)), rng.standard_normal((5, 3))]
    labels = [(rng.random((7, 3)) > 0.5).astype(float), (rng.random((5, 3)) > 0.5).astype(float)]
    labels[0][:, 2] = labels[1][:, 2] = 0  # class 2 has no positive: NaN
    ap = P.frame_ap(scores, labels)
    # naive reference: AP = mean over positives of precision at their rank (pooled steps)
    s, y = np.concatenate(scores), np.concatenate(labels)
    for c in range(2):
        order = np.argsort(-s[:, c])
        hits = y[order, c]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        assert ap[c] == pytest.approx(precision[hits == 1].mean())
    assert np.isnan(ap[2])
    metric = FrameMAP(3)
    for sc, lb in zip(scores, labels):
        metric.update(torch.sigmoid(torch.tensor(sc)).float().T[None], torch.tensor(lb).float().T[None],
                      torch.ones(1, len(sc), dtype=torch.bool))
    np.testing.assert_allclose(ap[:2], metric.compute()["ap"][:2].numpy(), rtol=1e-6)


def _file(tmp_path, signal: float, seed: int = 0, videos: int = 18):
    """Class c active on random spans; feature 0..C-1 = signal * label(t-1) (one step late) + noise;
    feature C.. pure noise. Subsets 12/3/3."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(videos):
        t = 40
        segs = np.array([[c, *sorted(rng.uniform(0, t, 2))] for c in range(3) for _ in range(2)])
        labels = labels_from_segments(segs, t, float(t), 3)
        late = np.vstack([np.zeros((1, 3)), labels[:-1]])
        feat = np.hstack([signal * late, np.zeros((t, 2))]) + rng.standard_normal((t, 5))
        subset = "training" if i < 12 else "validation" if i < 15 else "testing"
        recs.append(VideoRecord(f"v{i:02d}", subset, float(t), {"a": feat.astype(np.float32),
                                                                "b": rng.standard_normal((t, 2)).astype(np.float32)},
                                segs, labels))
    return write_feature_file(tmp_path / f"p{signal}_{seed}.h5", ["c0", "c1", "c2"], ["a", "b"], recs,
                              dtype="float32")


def test_probe_reads_a_clean_signal_with_context_and_not_noise(tmp_path):
    clean = _file(tmp_path, signal=20.0)
    # the label of step t sits in the features of step t+1: context 1 reads it almost exactly
    assert P.probe(clean, ["a"], context=1).test_map > 0.97
    # with no context it sees only the late copy: clearly worse (boundaries lost)
    assert P.probe(clean, ["a"], context=0).test_map < P.probe(clean, ["a"], context=1).test_map
    noise = P.probe(clean, ["b"], context=1)  # pure noise: near the class prevalence
    assert noise.test_map < 0.75
    both = P.probe(clean, None, context=1)
    assert both.modalities == ["a", "b"] and both.test_map > 0.95
    assert both.penalties.shape == (3,) and (both.penalties > 0).all()


def test_penalty_is_chosen_on_validation(tmp_path, monkeypatch):
    """The chosen penalty of each class is the argmax of its validation AP over the grid
    (the APs the probe computed, recorded through a spy), and val_map is their mean."""
    path = _file(tmp_path, signal=0.8, seed=3)
    seen = []
    real = P.frame_ap

    def spy(scores, labels):
        out = real(scores, labels)
        seen.append(out)
        return out

    monkeypatch.setattr(P, "frame_ap", spy)
    ratios = (1e-4, 1e-2, 1.0, 1e2)
    result = P.probe(path, ["a"], context=2, ratios=ratios)
    val = np.stack(seen[: len(ratios)])  # first the validation APs per penalty, then the test
    np.testing.assert_allclose(result.penalties, result.train_steps * np.array(ratios)[val.argmax(0)])
    assert result.val_map == pytest.approx(val.max(0).mean())


def test_probe_refuses_unknown_modality_and_missing_subset(tmp_path):
    path = _file(tmp_path, signal=1.0)
    with pytest.raises(FeatureFileError, match="modality 'flow' not in the file"):
        P.probe(path, ["flow"])
    with pytest.raises(FeatureFileError, match="subset 'dev' holds no video"):
        P.probe(path, ["a"], val_subset="dev")


def test_cli(tmp_path, capsys):
    path = _file(tmp_path, signal=20.0)
    assert P.main([str(path), "--modalities", "a", "--context", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("probe a context ±1: validation frame mAP") and "test frame mAP" in out
    assert P.main([str(path), "--modalities", "zzz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "modality 'zzz'" in err and str(path) in err
    with pytest.raises(SystemExit):
        P.main([str(path), "--context", "-1"])


def test_choose_per_class_takes_each_class_best_and_falls_back_for_a_class_without_positives():
    val_ap = np.array([[0.2, 0.9, np.nan, 0.1],
                       [0.5, 0.3, np.nan, 0.1],
                       [0.4, 0.4, np.nan, 0.6]])  # candidate means (nan-skipped): 0.40, 0.30, 0.47
    np.testing.assert_array_equal(P.choose_per_class(val_ap), [1, 0, 2, 2])
    np.testing.assert_array_equal(P.choose_per_class(np.full((2, 3), np.nan)), [0, 0, 0])


# --- a teacher's probabilities on unlabelled videos (the probe as a well-regularised student)

EXTRA = 48


@pytest.fixture(scope="module")
def unlabelled_pair(make_synthetic_h5):
    """The tiny world with EXTRA more training videos: without labels (subset 'unlabelled'),
    and the same videos, bit for bit, with their (noisy training) labels."""
    return (make_synthetic_h5(extra_training=EXTRA, extra_subset="unlabelled"),
            make_synthetic_h5(extra_training=EXTRA))


def _labels_of(path, names):
    ff = FeatureFile(path)
    out = {v: ff.read(v, ["labels"])["labels"].astype(np.float64) for v in names}
    ff.close()
    return out


def test_the_probes_own_least_squares_fit_is_a_fixed_point(unlabelled_pair):
    """Known property: the least-squares reader taught its own predictions on extra videos
    learns nothing new. With no context (columns of mean 0 on the training rows) and a
    negligible penalty, the weights and intercept are those of the probe without them, so the
    extra rows are wired in with the right centring (a wrong intercept would move them)."""
    path, _ = unlabelled_pair
    plain = P.probe(path, ["rgb"], context=0, ratios=(1e-12,))
    _, splits = P.probe_inputs(path, ["rgb"], 0, ("training", "unlabelled"), unlabelled=("unlabelled",))
    names = FeatureFile(path).videos_in("unlabelled")
    own = {v: f @ plain.weights + plain.intercept for v, f in zip(names, splits["unlabelled"].features)}
    taught = P.probe(path, ["rgb"], context=0, ratios=(1e-12,), extra_subset="unlabelled",
                     extra_targets=lambda ids: {v: own[v] for v in ids})
    assert taught.extra_videos == EXTRA and taught.train_steps > plain.train_steps
    np.testing.assert_allclose(taught.weights, plain.weights, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(taught.intercept, plain.intercept, rtol=1e-6, atol=1e-8)
    assert taught.test_map == pytest.approx(plain.test_map, abs=1e-9)


def test_a_teacher_that_knows_the_labels_gives_the_fit_on_labelled_videos(unlabelled_pair):
    """Targets equal to the extra videos' labels: the same rows and targets as the RGB
    ceiling's fit (only the standardisation differs: the labelled videos' statistics), so the
    weights and intercept match a direct, centred ridge solve on those rows."""
    path, labelled = unlabelled_pair
    ratio = 1e-2
    taught = P.probe(path, ["rgb"], context=1, ratios=(ratio,), extra_subset="unlabelled",
                     extra_targets=lambda ids: _labels_of(labelled, ids))
    _, s = P.probe_inputs(path, ["rgb"], 1, ("training", "unlabelled"), unlabelled=("unlabelled",))
    names = FeatureFile(path).videos_in("unlabelled")
    truth = _labels_of(labelled, names)
    x = np.concatenate(s["training"].features + s["unlabelled"].features)
    y = np.concatenate(s["training"].labels + [truth[v] for v in names])
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = np.linalg.solve(xc.T @ xc + len(x) * ratio * np.eye(x.shape[1]), xc.T @ yc)
    np.testing.assert_allclose(taught.weights, direct, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(taught.intercept, y.mean(0) - x.mean(0) @ direct, rtol=1e-8, atol=1e-10)
    # and the selection and score read those weights: the test figure is theirs
    s_test = P.probe_inputs(path, ["rgb"], 1, ("training", "testing"))[1]["testing"]
    want = P.frame_ap([(f - x.mean(0)) @ direct + y.mean(0) for f in s_test.features], s_test.labels)
    assert taught.test_map == pytest.approx(float(np.nanmean(want)), abs=1e-12)


def test_teacher_targets_are_refused_in_one_line_naming_the_video(unlabelled_pair):
    path, _ = unlabelled_pair
    names = FeatureFile(path).videos_in("unlabelled")
    with pytest.raises(UsageError, match="'training' is one the probe fits"):
        P.probe(path, ["rgb"], extra_subset="training", extra_targets=lambda ids: {})
    with pytest.raises(UsageError, match="needs extra_targets"):
        P.probe(path, ["rgb"], extra_subset="unlabelled")
    with pytest.raises(FeatureFileError, match=rf"video '{names[0]}' \(subset 'unlabelled'\).*got nothing"):
        P.probe(path, ["rgb"], extra_subset="unlabelled", extra_targets=lambda ids: {})
    wrong = lambda ids: {v: np.zeros((3, 2)) for v in ids}  # noqa: E731
    with pytest.raises(FeatureFileError, match=r"must have shape \(\d+, 6\) \(steps, classes\), got shape \(3, 2\)"):
        P.probe(path, ["rgb"], extra_subset="unlabelled", extra_targets=wrong)


def test_cli_with_a_teacher_checkpoint_uses_its_probabilities(unlabelled_pair, tmp_path, capsys, monkeypatch):
    """``--teacher CKPT``: the probe fit to that detector's probabilities on the unlabelled
    videos, computed here by hand, video by video, through the module."""
    import pytorch_lightning as pl

    from kd_detect.modules import TeacherModule, instantiate

    path, _ = unlabelled_pair
    ff = FeatureFile(path)
    dims = {m: ff.read(ff.video_ids[0], [m])[m].shape[1] for m in ("rgb", "flow")}
    classes, names = list(ff.classes), ff.videos_in("unlabelled")
    torch.manual_seed(0)
    head = {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 8, "num_layers": 1}}
    teacher = instantiate(TeacherModule, head=head, modalities=["rgb", "flow"], num_classes=len(classes),
                          classes=classes, modality_dims=dims).eval()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(teacher)
    ckpt = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(ckpt)
    by_hand = {}
    with torch.no_grad():
        for v in names:
            data = ff.read(v, ["rgb", "flow"])
            batch = {m: torch.from_numpy(data[m].astype(np.float32)).T[None] for m in ("rgb", "flow")}
            batch["mask"] = torch.ones(1, batch["rgb"].shape[2], dtype=torch.bool)
            by_hand[v] = torch.sigmoid(teacher(batch).logits)[0].T.double().numpy()
    ff.close()
    assert P.main([str(path), "--modalities", "rgb", "--teacher", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"+ {EXTRA} unlabelled videos scored by the teacher" in out
    want = P.probe(path, ["rgb"], extra_subset="unlabelled", extra_targets=lambda ids: {v: by_hand[v] for v in ids})
    assert f"test frame mAP {100 * want.test_map:.2f}" in out
    got = P.teacher_targets(ckpt, path)(names[:2])
    assert set(got) == set(names[:2])
    for v in names[:2]:
        np.testing.assert_allclose(got[v], by_hand[v], atol=1e-5)
    assert P.main([str(path), "--teacher", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.ckpt" in err
    # the teacher runs on the subset asked for, not on every video of the file
    import kd_detect.modules.inference as inference

    seen, real_iter = [], inference.iter_videos

    def spy(predictor, loader):
        for item in real_iter(predictor, loader):
            seen.append(item[0])
            yield item

    monkeypatch.setattr(inference, "iter_videos", spy)
    P.teacher_targets(ckpt, path)(names)
    assert sorted(seen) == sorted(names)
    monkeypatch.undo()
    # a teacher of other classes is refused in one line naming both
    other = instantiate(TeacherModule, head=head, modalities=["rgb", "flow"], num_classes=len(classes),
                        classes=[f"x{i}" for i in range(len(classes))], modality_dims=dims)
    trainer.strategy.connect(other)
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    assert P.main([str(path), "--modalities", "rgb", "--teacher", str(tmp_path / "other.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.ckpt" in err and "classes" in err and str(path) in err


def test_a_file_without_validation_holds_out_the_detectors_validation_videos(tmp_path, capsys):
    """No 'validation' subset (Charades, TSU): the penalty is chosen on the 15 % of the
    training videos a detector validates on (by SHA-1 of the id), which leave the fit; the
    same figures as a file where exactly those videos are the validation subset."""
    from kd_detect.data.feature_data import AUTO_SHARE, fixed_share

    rng = np.random.default_rng(5)
    recs, t = [], 30
    for i in range(20):
        segs = np.array([[c, *sorted(rng.uniform(0, t, 2))] for c in range(2)])
        labels = labels_from_segments(segs, t, float(t), 2)
        feat = np.hstack([2.0 * labels, np.zeros((t, 1))]) + rng.standard_normal((t, 3))
        recs.append(VideoRecord(f"v{i:02d}", "training" if i < 16 else "testing", float(t),
                                {"a": feat.astype(np.float32)}, segs, labels))
    path = write_feature_file(tmp_path / "noval.h5", ["c0", "c1"], ["a"], recs, dtype="float32")
    held = fixed_share([f"v{i:02d}" for i in range(16)], AUTO_SHARE)
    assert len(held) == 3
    moved = [VideoRecord(r.video_id, "validation" if r.video_id in held else r.subset, r.duration, r.features,
                         r.segments, r.labels) for r in recs]
    explicit = write_feature_file(tmp_path / "val.h5", ["c0", "c1"], ["a"], moved, dtype="float32")
    auto, want = P.probe(path, ["a"], context=1), P.probe(explicit, ["a"], context=1)
    assert auto.held_out == 3 and want.held_out == 0
    assert auto.train_steps == want.train_steps == 13 * t
    assert auto.test_map == pytest.approx(want.test_map, abs=1e-12) and auto.val_map == pytest.approx(want.val_map)
    np.testing.assert_allclose(auto.weights, want.weights, rtol=1e-10)
    assert P.main([str(path), "--context", "1"]) == 0
    assert "no validation subset: 3 training videos held out by SHA-1 of the id" in capsys.readouterr().out


def test_a_share_of_the_training_videos_is_the_probe_of_a_file_without_the_others(tmp_path, capsys):
    """``training_share``: the fit reads the SHA-1 share of the training videos only (the
    same figures, weights included, as a file holding just those training videos); the
    shares are nested, validation and test unchanged; a share outside (0, 1] is refused."""
    from kd_detect.data.feature_data import fixed_share

    path = _file(tmp_path, signal=1.5, seed=7, videos=18)
    ff = FeatureFile(path)
    recs = [ff.record(v) for v in ff.video_ids]
    train = ff.videos_in("training")
    ff.close()
    kept = fixed_share(train, 0.5)
    assert len(kept) == 6 and set(fixed_share(train, 0.25)) <= set(kept)
    fewer = write_feature_file(tmp_path / "half.h5", ["c0", "c1", "c2"], ["a", "b"],
                               [r for r in recs if r.subset != "training" or r.video_id in kept], dtype="float32")
    half, want, full = P.probe(path, ["a"], training_share=0.5), P.probe(fewer, ["a"]), P.probe(path, ["a"])
    assert half.train_steps == want.train_steps == 6 * 40 < full.train_steps == 12 * 40
    assert half.test_map == pytest.approx(want.test_map, abs=1e-12) and half.val_map == pytest.approx(want.val_map)
    np.testing.assert_allclose(half.weights, want.weights, rtol=1e-10)
    assert half.test_map != pytest.approx(full.test_map, abs=1e-9)
    for bad in (0.0, 1.5):
        with pytest.raises(UsageError, match="training_share must be in"):
            P.probe(path, ["a"], training_share=bad)
    assert P.main([str(path), "--modalities", "a", "--training-share", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("probe a context ±2 on 0.5 of the training videos:")
    assert f"test frame mAP {100 * half.test_map:.2f} ({6 * 40} training steps" in out
    with pytest.raises(SystemExit):
        P.main([str(path), "--training-share", "0"])
