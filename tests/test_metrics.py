"""Metrics (DESIGN.md §5): per-frame mAP, Charades localisation mAP, event-level mAP."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_detect.metrics import (
    CharadesMAP,
    EventMAP,
    FrameMAP,
    charades_frames,
    event_map,
    extract_segments,
    write_charades_submission,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- references
def ap_meter_reference(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The classic APMeter: per class, sort scores descending and average the precision at
    each positive's rank; 0 for a class without positives."""
    n, num_classes = scores.shape
    ap = np.zeros(num_classes)
    for c in range(num_classes):
        order = np.argsort(-scores[:, c], kind="stable")
        truth = targets[order, c]
        precision = np.cumsum(truth) / np.arange(1, n + 1)
        ap[c] = precision[truth == 1].sum() / max(truth.sum(), 1)
    return ap


def random_batch(rng: np.random.Generator, lengths: list[int], num_classes: int, absent: tuple[int, ...] = ()):
    steps = max(lengths)
    probs = torch.from_numpy(rng.random((len(lengths), num_classes, steps))).float()
    labels = torch.from_numpy(rng.random((len(lengths), num_classes, steps)) < 0.3).float()
    mask = torch.arange(steps)[None] < torch.tensor(lengths)[:, None]
    labels[:, list(absent)] = 0
    # Padding carries high scores and positive labels: it must be ignored.
    pad = ~mask.unsqueeze(1).expand_as(probs)
    probs[pad], labels[pad] = 0.999, 1.0
    return probs, labels, mask


def pooled(batches):
    scores = np.concatenate([p.transpose(1, 2)[m].numpy() for p, _, m in batches]).astype(np.float64)
    targets = np.concatenate([lab.transpose(1, 2)[m].numpy() for _, lab, m in batches])
    return scores, targets


# ---------------------------------------------------------------------------- FrameMAP
def test_frame_map_hand_computed() -> None:
    # Ranked scores .9 (+), .8 (-), .7 (+), .6 (-): AP = (1/1 + 2/3) / 2. Class 1 has no positive.
    probs = torch.tensor([[[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]]])
    labels = torch.tensor([[[1.0, 0, 1, 0], [0, 0, 0, 0]]])
    metric = FrameMAP(2)
    metric.update(probs, labels, torch.ones(1, 4, dtype=torch.bool))
    res = metric.compute()
    assert res["map"].item() == pytest.approx(5 / 6, abs=1e-7)
    assert res["map_all"].item() == pytest.approx(5 / 12, abs=1e-7)
    assert res["ap"][0].item() == pytest.approx(5 / 6, abs=1e-7) and torch.isnan(res["ap"][1])


@pytest.mark.parametrize(
    "batch_lengths,num_classes,absent",
    [([[5, 3], [7]], 4, (1,)), ([[1], [1, 1], [2]], 3, ()), ([[40, 17, 33], [25, 25]], 12, (0, 5, 11))],
)
def test_frame_map_equals_ap_meter(batch_lengths, num_classes: int, absent) -> None:
    rng = np.random.default_rng(len(batch_lengths) * 7 + num_classes)
    batches = [random_batch(rng, lengths, num_classes, absent) for lengths in batch_lengths]
    metric = FrameMAP(num_classes)
    for probs, labels, mask in batches:
        metric.update(probs, labels, mask)
    res = metric.compute()
    scores, targets = pooled(batches)
    assert len(np.unique(scores)) == scores.size  # tie-free
    ref = ap_meter_reference(scores, targets)
    has_pos = targets.sum(0) > 0
    np.testing.assert_allclose(res["ap"].numpy()[has_pos], ref[has_pos], atol=1e-6, rtol=0)
    assert torch.isnan(res["ap"][torch.from_numpy(~has_pos)]).all()
    assert res["map"].item() == pytest.approx(ref[has_pos].mean(), abs=1e-6)
    assert res["map_all"].item() == pytest.approx(ref.mean(), abs=1e-6)


def test_frame_map_ignores_padding_and_batching() -> None:
    rng = np.random.default_rng(3)
    probs, labels, mask = random_batch(rng, [9, 4, 6], 5)
    whole = FrameMAP(5)
    whole.update(probs, labels, mask)
    split = FrameMAP(5)
    for i, n in enumerate([9, 4, 6]):  # one video per update, no padding at all
        split.update(probs[i : i + 1, :, :n], labels[i : i + 1, :, :n], torch.ones(1, n, dtype=torch.bool))
    torch.testing.assert_close(whole.compute()["ap"], split.compute()["ap"], equal_nan=True)


def test_frame_map_bad_input() -> None:
    metric = FrameMAP(3)
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'probs' must be probabilities in \[0, 1\].*sigmoid"):
        metric.update(torch.randn(1, 3, 4) * 5, torch.zeros(1, 3, 4), mask)
    with pytest.raises(ValueError, match=r"'probs' must have shape \(B, C=3, T\)"):
        metric.update(torch.rand(1, 2, 4), torch.zeros(1, 2, 4), mask)
    with pytest.raises(ValueError, match="'labels' must be binary"):
        metric.update(torch.rand(1, 3, 4), torch.full((1, 3, 4), 0.5), mask)
    with pytest.raises(ValueError, match="'mask' must be a bool tensor"):
        metric.update(torch.rand(1, 3, 4), torch.zeros(1, 3, 4), mask.float())
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(FrameMAP(3).compute()["map"])


def test_frame_map_tie_group_counted_at_once() -> None:
    # Tied scores form one threshold: precision 1/2 at recall 1 -> AP 0.5 whatever the sort order
    # (APMeter would give 1.0 or 0.5 depending on which tied step its sort puts first).
    metric = FrameMAP(1)
    probs, labels = torch.tensor([[[0.5, 0.5, 0.2]]]), torch.tensor([[[0.0, 1.0, 0.0]]])
    metric.update(probs, labels, torch.ones(1, 3, dtype=torch.bool))
    assert metric.compute()["map"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------- Charades
def test_charades_frames_hand_computed() -> None:
    # duration 25 s -> frame j at t_j = j s (exact in binary). T = 10 -> step floor(j*10/25).
    scores = np.arange(10, dtype=np.float64)[:, None] * np.array([[1.0, -1.0, 2.0]])
    segments = np.array([[1, 2.0, 5.0], [0, 10.0, 10.0], [2, 23.5, 30.0], [1, 7.5, 7.9]])
    fs, gt = charades_frames(scores, 25.0, segments, 3)
    steps = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9]
    np.testing.assert_array_equal(fs[:, 0], steps)
    np.testing.assert_array_equal(fs[:, 2], 2 * np.array(steps))
    assert gt.shape == (25, 3) and gt.dtype == np.uint8
    assert np.flatnonzero(gt[:, 1]).tolist() == [2, 3, 4, 5]  # inclusive at both ends; [7.5, 7.9] has no frame
    assert np.flatnonzero(gt[:, 0]).tolist() == [10]  # zero-length segment on a frame counts
    assert np.flatnonzero(gt[:, 2]).tolist() == [24]  # end beyond the duration (messy row) is fine
    # Tensor in -> tensors out; T >= 25 and T = 1.
    fs_t, gt_t = charades_frames(torch.arange(100.0)[:, None], 25.0, np.zeros((0, 3)), 1)
    assert torch.equal(fs_t[:, 0], 4 * torch.arange(25.0)) and int(gt_t.sum()) == 0
    fs1, _ = charades_frames(np.array([[0.3]]), 2.0, np.zeros((0, 3)), 1)
    np.testing.assert_array_equal(fs1, np.full((25, 1), 0.3))


def test_charades_frames_bad_input_names_video() -> None:
    with pytest.raises(ValueError, match=r"video 'v7'.*'segments'.*class ids outside \[0, 2\)"):
        charades_frames(np.zeros((5, 2)), 10.0, np.array([[2, 0.0, 1.0]]), 2, video_id="v7")
    with pytest.raises(ValueError, match=r"video 'v7'.*'duration'"):
        charades_frames(np.zeros((5, 2)), 0.0, np.zeros((0, 3)), 2, video_id="v7")


def test_charades_map_hand_computed() -> None:
    # One video, T = 25 (frame j = step j), scores increasing with j, class 0 positive on frames 0, 1
    # -> ranks 25 and 24 -> AP = (1/24 + 2/25) / 2. Class 1 is never positive.
    probs = torch.stack([torch.arange(25.0) / 25, torch.full((25,), 0.5)])[None] + 0.01
    metric = CharadesMAP(2)
    mask = torch.ones(1, 25, dtype=torch.bool)
    metric.update(probs, mask, torch.tensor([25.0]), [np.array([[0, 0.0, 1.0]])], ["vid"])
    expected = (1 / 24 + 2 / 25) / 2
    assert metric.compute().item() == pytest.approx(expected / 2, abs=1e-7)  # all classes, absent counts 0
    details = metric.compute_details()
    assert details["map_present"].item() == pytest.approx(expected, abs=1e-7)
    assert details["wap"].item() == pytest.approx(expected, abs=1e-7)
    assert torch.isnan(details["ap"][1])


def test_charades_map_equals_reference_on_pooled_frames() -> None:
    rng = np.random.default_rng(5)
    num_classes, durations = 4, [30.0, 12.5, 47.0, 8.0]
    lengths = [60, 31, 90, 26]  # T >= 25 with distinct random scores: tie-free frames
    videos = []
    for i, (dur, steps) in enumerate(zip(durations, lengths)):
        segs = np.array([[rng.integers(num_classes), *sorted(rng.uniform(0, dur, 2))] for _ in range(3)])
        videos.append((f"v{i}", dur, steps, rng.random((steps, num_classes)), segs))
    metric = CharadesMAP(num_classes)
    for chunk in (videos[:3], videos[3:]):
        steps = max(v[2] for v in chunk)
        probs = torch.zeros(len(chunk), num_classes, steps)
        mask = torch.zeros(len(chunk), steps, dtype=torch.bool)
        for b, (_, _, n, scores, _) in enumerate(chunk):
            probs[b, :, :n] = torch.from_numpy(scores.T).float()
            mask[b, :n] = True
        metric.update(probs, mask, torch.tensor([v[1] for v in chunk]), [v[4] for v in chunk], [v[0] for v in chunk])
    frames = [charades_frames(v[3].astype(np.float32), v[1], v[4], num_classes) for v in videos]
    scores = np.concatenate([f[0] for f in frames]).astype(np.float64)
    gt = np.concatenate([f[1] for f in frames])
    ref = ap_meter_reference(scores, gt)
    present = gt.sum(0) > 0
    details = metric.compute_details()
    np.testing.assert_allclose(details["ap"].numpy()[present], ref[present], atol=1e-6, rtol=0)
    assert metric.compute().item() == pytest.approx(ref.mean(), abs=1e-6)
    assert details["wap"].item() == pytest.approx((ref * gt.sum(0)).sum() / gt.sum(), abs=1e-6)
    ids, frame_scores = metric.frame_scores()
    assert ids == ["v0", "v1", "v2", "v3"] and frame_scores.shape == (4, 25, num_classes)
    np.testing.assert_allclose(frame_scores.reshape(-1, num_classes), scores, atol=1e-7)


def test_write_charades_submission_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((2, 25, 3)).astype(np.float32)
    path = write_charades_submission(tmp_path / "sub" / "submission.txt", ["AB12C", "ZZ9"], scores)
    lines = path.read_text().splitlines()
    assert len(lines) == 50
    assert [ln.split()[:2] for ln in lines[:2]] == [["AB12C", "1"], ["AB12C", "2"]]
    assert lines[25].split()[:2] == ["ZZ9", "1"] and lines[-1].split()[1] == "25"
    parsed = np.array([[float(x) for x in ln.split()[2:]] for ln in lines]).reshape(2, 25, 3)
    np.testing.assert_allclose(parsed, scores, rtol=1e-6)
    assert sorted(p.name for p in path.parent.iterdir()) == ["submission.txt"]  # no temp file left
    with pytest.raises(ValueError, match="must be non-empty without whitespace"):
        write_charades_submission(tmp_path / "bad.txt", ["a b"], scores[:1])
    with pytest.raises(ValueError, match=r"video 'x': frame scores must be \(25, C\)"):
        write_charades_submission(tmp_path / "bad.txt", ["x"], [np.zeros((24, 3))])
    assert not (tmp_path / "bad.txt").exists()


# ------------------------------------------------------------------------------- events
def segments_reference(scores: np.ndarray, duration: float, threshold: float, merge_gap: float, min_length: float):
    """Step-by-step loop version of extract_segments."""
    steps, num_classes = scores.shape
    step = duration / steps
    out = []
    for c in range(num_classes):
        runs, start = [], None
        for i in range(steps + 1):
            on = i < steps and scores[i, c] >= threshold
            if on and start is None:
                start = i
            if not on and start is not None:
                runs.append([start, i])
                start = None
        merged = []
        for run in runs:
            if merged and (run[0] - merged[-1][1]) * step <= merge_gap + 1e-9:
                merged[-1][1] = run[1]
            else:
                merged.append(list(run))
        for s, e in merged:
            if (e - s) * step >= min_length - 1e-9:
                out.append((c, s * step, e * step, float(np.mean(scores[s:e, c]))))
    return out


def test_extract_segments_hand_computed() -> None:
    col = [0.1, 0.6, 0.7, 0.2, 0.9, 0.1, 0.1, 0.8, 0.8, 0.8]  # duration 20 s -> 2 s per step
    scores = np.array([col, [0.5] * 10]).T
    got = extract_segments(scores, 20.0)
    expected = [(0, 2.0, 6.0, 0.65), (0, 8.0, 10.0, 0.9), (0, 14.0, 20.0, 0.8), (1, 0.0, 20.0, 0.5)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g[0] == e[0] and g[1:] == pytest.approx(e[1:])
    # A 2 s gap merges (score = mean over the merged steps, gap included); the 4 s gap does not.
    merged = extract_segments(scores[:, :1], 20.0, merge_gap=2.0)
    assert [m[1:3] for m in merged] == [(2.0, 10.0), (14.0, 20.0)]
    assert merged[0][3] == pytest.approx((0.6 + 0.7 + 0.2 + 0.9) / 4)
    assert [m[1:3] for m in extract_segments(scores[:, :1], 20.0, min_length=4.0)] == [(2.0, 6.0), (14.0, 20.0)]
    assert extract_segments(scores, 20.0, threshold=0.95) == []


@pytest.mark.parametrize("seed", range(4))
def test_extract_segments_matches_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = int(rng.integers(1, 60))
    scores = rng.random((steps, 3))
    kwargs = {
        "threshold": 0.4,
        "merge_gap": float(rng.choice([0.0, 1.0, 3.0])),
        "min_length": float(rng.choice([0.0, 2.0])),
    }
    got = extract_segments(torch.from_numpy(scores), 30.0, **kwargs)
    ref = segments_reference(scores, 30.0, **kwargs)
    assert [g[0] for g in got] == [r[0] for r in ref]
    if ref:
        np.testing.assert_allclose([g[1:] for g in got], [r[1:] for r in ref], atol=1e-9)


def official_ap(lst: list[tuple[float, bool]], total: int) -> float:
    """Literal port of PKU-MMD evaluate.py's ap(): lst = [(confidence, hit)]."""
    lst = sorted(lst, key=lambda x: x[0])
    pos = float(sum(h for _, h in lst))
    score, number, old_precision = 0.0, float(len(lst)), 0.0
    if total == 0:
        return 0.0
    old_recall = min(pos / total, 1)
    for _, hit in lst:
        number -= 1
        if not hit:
            continue
        pos -= 1
        if number == 0:
            break
        precision, recall = pos / number, min(pos / total, 1)
        old_precision = max(old_precision, precision)
        score += old_precision * (old_recall - recall)
        old_recall = recall
    return score + old_precision * old_recall


def voc_ap(lst: list[tuple[float, bool]], total: int) -> float:
    """All-point interpolated AP, written from its definition."""
    lst = sorted(lst, key=lambda x: -x[0])
    precisions = [sum(h for _, h in lst[: i + 1]) / (i + 1) for i in range(len(lst))]
    return sum(max(precisions[i:]) for i, (_, h) in enumerate(lst) if h) / total


def iou(a, b) -> float:
    return (min(a[1], b[1]) - max(a[0], b[0])) / (max(a[1], b[1]) - min(a[0], b[0]))


def event_map_reference(predictions, ground_truth, theta: float, num_classes: int, unique: bool, variant: str):
    per_class = {c: [] for c in range(num_classes)}
    for vid, dets in predictions.items():
        gts = [g for g in ground_truth[vid]]
        taken = set()
        for det in sorted(dets, key=lambda d: -d[3]):
            cands = [(iou(det[1:3], g[1:3]), j) for j, g in enumerate(gts) if int(g[0]) == det[0]]
            if unique:
                cands = [(o, j) for o, j in cands if j not in taken and o >= theta]
                hit = bool(cands)
                if hit:
                    taken.add(max(cands)[1])
            else:
                hit = max([o for o, _ in cands], default=0.0) >= theta
            per_class[det[0]].append((det[3], hit))
    totals = [sum(int(g[0]) == c for segs in ground_truth.values() for g in segs) for c in range(num_classes)]
    fn = official_ap if variant == "pku" else voc_ap
    return np.array([fn(per_class[c], totals[c]) if totals[c] else np.nan for c in range(num_classes)])


def random_events(rng: np.random.Generator, num_videos: int, num_classes: int):
    predictions, ground_truth = {}, {}
    for v in range(num_videos):
        gts = []
        for _ in range(rng.integers(0, 5)):
            s = rng.uniform(0, 50)
            gts.append([int(rng.integers(num_classes)), s, s + rng.uniform(1, 15)])
        dets = []
        for g in gts:  # noisy copies of the ground truth, some duplicated, some wrong class
            for _ in range(rng.integers(0, 3)):
                c = g[0] if rng.random() < 0.8 else int(rng.integers(num_classes))
                dets.append((c, g[1] + rng.normal(0, 2), g[2] + rng.normal(0, 2), float(rng.random())))
        for _ in range(rng.integers(0, 3)):  # pure false alarms
            s = rng.uniform(0, 50)
            dets.append((int(rng.integers(num_classes)), s, s + rng.uniform(1, 10), float(rng.random())))
        dets = [(c, min(s, e), max(s, e), p) for c, s, e, p in dets]
        ground_truth[f"v{v}"] = np.array(gts).reshape(-1, 3)
        predictions[f"v{v}"] = dets
    return predictions, ground_truth


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("unique,variant", [(True, "pku"), (False, "pku"), (True, "voc")])
def test_event_map_matches_independent_reference(seed: int, unique: bool, variant: str) -> None:
    rng = np.random.default_rng(seed)
    predictions, ground_truth = random_events(rng, 6, 4)
    res = event_map(predictions, ground_truth, num_classes=4, unique_matches=unique, ap_variant=variant)
    for theta in (0.1, 0.3, 0.5):
        ref = event_map_reference(predictions, ground_truth, theta, 4, unique, variant)
        np.testing.assert_allclose(res["ap"][theta], ref, atol=1e-12, equal_nan=True)
        assert res[f"map@{theta:g}"] == pytest.approx(np.nanmean(ref))
        assert res[f"map_all@{theta:g}"] == pytest.approx(np.nan_to_num(ref).mean())
    assert res["map"] == pytest.approx(np.mean([res[f"map@{t:g}"] for t in (0.1, 0.3, 0.5)]))


def test_event_map_hand_computed() -> None:
    gt = {"a": np.array([[0, 0.0, 10.0], [0, 20.0, 30.0]]), "b": np.array([[1, 0.0, 10.0]])}
    # Class 0: hit (.9), miss (.85), hit (.8) with G = 2 -> official 0.5, VOC (1 + 2/3)/2.
    # Class 1: a single hit ranked first -> official 0 (quirk of the official loop), VOC 1.
    preds = {
        "a": [(0, 0.0, 10.0, 0.9), (0, 40.0, 50.0, 0.85), (0, 21.0, 30.0, 0.8)],
        "b": [(1, 0.0, 9.0, 0.7)],
    }
    pku = event_map(preds, gt, thetas=(0.5,), ap_variant="pku")
    np.testing.assert_allclose(pku["ap"][0.5], [0.5, 0.0])
    np.testing.assert_allclose(event_map(preds, gt, thetas=(0.5,))["ap"][0.5], [(1 + 2 / 3) / 2, 1.0])  # default: voc
    voc = event_map(preds, gt, thetas=(0.5,), ap_variant="voc")
    np.testing.assert_allclose(voc["ap"][0.5], [(1 + 2 / 3) / 2, 1.0])
    # IoU([0,10], [5,15]) = 5/15: a hit at 0.3, a miss at 0.5 (two detections so the official AP is non-zero).
    one = {"a": np.array([[0, 5.0, 15.0]])}
    res = event_map({"a": [(0, 100.0, 110.0, 0.9), (0, 0.0, 10.0, 0.5)]}, one, thetas=(0.3, 0.5), ap_variant="voc")
    assert res["ap"][0.3][0] == pytest.approx(0.5) and res["ap"][0.5][0] == 0.0
    # Duplicates on one ground truth: distinct matching counts one hit; the official script counts both.
    dup = {"a": [(0, 5.0, 15.0, 0.9), (0, 6.0, 15.0, 0.8)]}
    assert event_map(dup, one, thetas=(0.5,), ap_variant="voc")["ap"][0.5][0] == pytest.approx(1.0)
    assert event_map(dup, one, thetas=(0.5,), ap_variant="pku")["ap"][0.5][0] == 0.0
    assert event_map(dup, one, thetas=(0.5,), unique_matches=False, ap_variant="pku")["ap"][0.5][0] == pytest.approx(1.0)
    # A class with ground truth but no detection has AP 0; videos without predictions still count.
    res = event_map({}, gt, thetas=(0.5,))
    np.testing.assert_array_equal(res["ap"][0.5], [0.0, 0.0])


def test_event_map_bad_input() -> None:
    gt = {"a": np.array([[0, 0.0, 10.0]])}
    with pytest.raises(ValueError, match=r"videos \['zz'\] have predictions but no ground truth"):
        event_map({"zz": []}, gt)
    with pytest.raises(ValueError, match=r"video 'a': detections must be"):
        event_map({"a": [(5, 0.0, 1.0, 0.5)]}, gt, num_classes=2)
    with pytest.raises(ValueError, match="thetas"):
        event_map({}, gt, thetas=(0.0,))


def test_event_metric_equals_function() -> None:
    rng = np.random.default_rng(11)
    num_classes, lengths, durations = 3, [40, 25, 33], [20.0, 12.0, 50.0]
    probs = torch.zeros(3, num_classes, 40)
    mask = torch.arange(40)[None] < torch.tensor(lengths)[:, None]
    for b, n in enumerate(lengths):  # smooth random curves so there are real segments
        curve = np.convolve(rng.random(n + 8), np.ones(9) / 9, mode="valid")[:n]
        probs[b, :, :n] = torch.from_numpy(np.stack([curve, 1 - curve, curve**2])).float()
        probs[b, :, n:] = 0.99  # padding must not create segments
    segments = [np.array([[0, 2.0, 9.0], [1, 0.0, 4.0]]), np.array([[2, 1.0, 11.0]]), np.zeros((0, 3))]
    metric = EventMAP(num_classes, threshold=0.5, merge_gap=1.0)
    metric.update(probs[:2], mask[:2], torch.tensor(durations[:2]), segments[:2], ["a", "b"])
    metric.update(probs[2:], mask[2:], torch.tensor(durations[2:]), segments[2:], ["c"])
    preds = {
        vid: extract_segments(probs[b, :, : lengths[b]].T, durations[b], 0.5, 1.0)
        for b, vid in enumerate(["a", "b", "c"])
    }
    assert all(end <= durations[b] + 1e-9 for b, vid in enumerate("abc") for _, _, end, _ in preds[vid])
    ref = event_map(preds, dict(zip("abc", segments)), num_classes=num_classes)
    res = metric.compute()
    for theta in (0.1, 0.3, 0.5):
        assert res[f"event_map@{theta:g}"].item() == pytest.approx(ref[f"map@{theta:g}"], nan_ok=True)
    assert res["event_map"].item() == pytest.approx(ref["map"], nan_ok=True)
    details = metric.compute_details()
    for theta in (0.1, 0.3, 0.5):
        np.testing.assert_allclose(details["ap"][theta], ref["ap"][theta], equal_nan=True)


# ---------------------------------------------------------------------------------- DDP
def _ddp_data():
    rng = np.random.default_rng(21)
    num_classes, videos = 3, []
    for i in range(5):
        n = int(rng.integers(26, 50))
        curve = np.convolve(rng.random(n + 8), np.ones(9) / 9, mode="valid")[:n]
        scores = np.stack([curve, rng.random(n), 1 - curve])
        labels = (rng.random((num_classes, n)) < 0.3).astype(np.float32)
        segs = np.array([[rng.integers(num_classes), *sorted(rng.uniform(0, 20, 2))] for _ in range(2)])
        videos.append((f"v{i}", 20.0, torch.from_numpy(scores).float(), torch.from_numpy(labels), segs))
    return num_classes, videos


def _evaluate(videos, num_classes):
    metrics = FrameMAP(num_classes), CharadesMAP(num_classes), EventMAP(num_classes)
    for vid, dur, scores, labels, segs in videos:  # one video per update
        mask = torch.ones(1, scores.shape[1], dtype=torch.bool)
        metrics[0].update(scores[None], labels[None], mask)
        metrics[1].update(scores[None], mask, torch.tensor([dur]), [segs], [vid])
        metrics[2].update(scores[None], mask, torch.tensor([dur]), [segs], [vid])
    ids, frames = metrics[1].frame_scores()
    return {
        "frame_ap": metrics[0].compute()["ap"],
        "charades": metrics[1].compute(),
        "event": metrics[2].compute()["event_map"],
        "frames": dict(zip(ids, frames)),
    }


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        num_classes, videos = _ddp_data()
        result = _evaluate(videos[rank::world], num_classes)  # 3 videos on rank 0, 2 on rank 1
        if rank == 0:
            torch.save(result, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_metrics_exact_under_ddp(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp.pt"
    # fork: the children reuse the imported modules (spawn would re-import torch: ~10 s on a busy CI box).
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, port, str(out)), nprocs=2, join=True, start_method="fork"
    )
    got = torch.load(out, weights_only=False)
    num_classes, videos = _ddp_data()
    ref = _evaluate(videos, num_classes)
    torch.testing.assert_close(got["frame_ap"], ref["frame_ap"], equal_nan=True)
    assert got["charades"].item() == pytest.approx(ref["charades"].item(), abs=1e-12)
    assert got["event"].item() == pytest.approx(ref["event"].item(), abs=1e-12)
    assert sorted(got["frames"]) == sorted(ref["frames"]) == [f"v{i}" for i in range(5)]
    for vid, frames in ref["frames"].items():
        np.testing.assert_array_equal(got["frames"][vid], frames)
