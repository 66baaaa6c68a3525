"""Linear probe (kd_detect.lab.probe): context stacking, ridge against a direct solve,
penalty selection on validation, and the test figure through FrameMAP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_detect.data.format import FeatureFileError, VideoRecord, labels_from_segments, write_feature_file
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
