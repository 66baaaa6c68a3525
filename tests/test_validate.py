"""``kd-detect check`` / validate_file (DESIGN.md §4, §7): every violation is reported
with exit status 1 and a line naming the video and the field."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from kd_detect.apps.check import main
from kd_detect.data.format import VideoRecord, write_feature_file
from kd_detect.data.validate import validate_file

CLASSES = ["walk", "sit", "drink"]
T = 12


def _good(path: Path, num_classes: int = 3, videos: int = 3) -> Path:
    rng = np.random.default_rng(0)
    records = []
    for i in range(videos):
        feats = {"rgb": rng.standard_normal((T, 4)), "flow": rng.standard_normal((T, 2))}
        seg = np.array([[i % num_classes, 1.5, 6.5], [(i + 1) % num_classes, 4.2, 11.0]])
        records.append(VideoRecord(f"v{i}", "training" if i else "testing", float(T), feats, seg))
    classes = CLASSES if num_classes == 3 else [f"class{c}" for c in range(num_classes)]
    return write_feature_file(path, classes, ["rgb", "flow"], records, dtype="float32")


def _replace(group: h5py.Group, name: str, data) -> None:
    del group[name]
    group.create_dataset(name, data=data)


def _zero_length(h5: h5py.File) -> None:
    g = h5["videos/v1"]
    _replace(g, "rgb", np.zeros((0, 4), np.float32))
    _replace(g, "flow", np.zeros((0, 2), np.float32))
    _replace(g, "labels", np.zeros((0, 3), np.uint8))


def _nan(h5: h5py.File) -> None:
    data = h5["videos/v2/rgb"][()]
    data[5, 1] = np.nan
    data[7, 0] = np.inf
    h5["videos/v2/rgb"][...] = data


# (mutation, video, field, text) -- every message must contain all three strings
VIOLATIONS = {
    "unknown_format": (lambda h5: h5.attrs.__setitem__("kd_detect_format", 7), "root", "kd_detect_format", "7"),
    "missing_format": (lambda h5: h5.attrs.__delitem__("kd_detect_format"), "root", "kd_detect_format", "missing"),
    "missing_classes": (lambda h5: h5.attrs.__delitem__("classes"), "root", "'classes'", "missing"),
    "missing_modalities": (lambda h5: h5.attrs.__delitem__("modalities"), "root", "'modalities'", "missing"),
    "missing_modality": (lambda h5: h5["videos/v2"].__delitem__("flow"), "video 'v2'", "'flow'", "missing"),
    "different_T": (
        lambda h5: _replace(h5["videos/v1"], "flow", np.zeros((T - 2, 2), np.float32)),
        "video 'v1'", "modality 'flow' has T=10", "but field 'labels' and modalities ['rgb'] have T=12",
    ),
    "features_shorter_than_labels": (
        lambda h5: [_replace(h5["videos/v1"], m, h5[f"videos/v1/{m}"][()][:-3]) for m in ("rgb", "flow")],
        "video 'v1'", "modalities ['rgb', 'flow'] have T=9", "field 'labels' T=12",
    ),
    "labels_shape": (
        lambda h5: _replace(h5["videos/v0"], "labels", np.zeros((T, 4), np.uint8)),
        "video 'v0'", "'labels'", "expected (12, 3)",
    ),
    "labels_dtype": (
        lambda h5: _replace(h5["videos/v0"], "labels", h5["videos/v0/labels"][()].astype(np.float32)),
        "video 'v0'", "'labels'", "expected uint8",
    ),
    "segments_shape": (
        lambda h5: _replace(h5["videos/v1"], "segments", np.zeros((2, 2))), "video 'v1'", "'segments'", "(N, 3)",
    ),
    "class_out_of_range": (
        lambda h5: _replace(h5["videos/v1"], "segments", np.array([[3.0, 1.0, 2.0]])),
        "video 'v1'", "'segments'", "class id out of range",
    ),
    "start_after_end": (
        lambda h5: _replace(h5["videos/v2"], "segments", np.array([[0.0, 5.0, 2.0]])),
        "video 'v2'", "'segments'", "start > end",
    ),
    "nan_features": (_nan, "video 'v2'", "'rgb'", "2 non-finite values (NaN/inf), first at step 5"),
    "zero_length": (_zero_length, "video 'v1'", "zero-length", "T=0"),
    "missing_subset": (lambda h5: h5["videos/v0"].attrs.__delitem__("subset"), "video 'v0'", "'subset'", "missing"),
    "missing_duration": (
        lambda h5: h5["videos/v2"].attrs.__delitem__("duration"), "video 'v2'", "'duration'", "missing",
    ),
    "bad_duration": (
        lambda h5: h5["videos/v2"].attrs.__setitem__("duration", -1.0), "video 'v2'", "'duration'", "> 0",
    ),
    "dim_inconsistent": (
        lambda h5: _replace(h5["videos/v2"], "rgb", np.zeros((T, 5), np.float32)),
        "video 'v2'", "'rgb'", "dim 5, expected 4 (as in video 'v0')",
    ),
    "feature_dtype": (
        lambda h5: _replace(h5["videos/v1"], "rgb", np.zeros((T, 4), np.float64)),
        "video 'v1'", "'rgb'", "dtype float64",
    ),
    "labels_disagree": (
        lambda h5: _replace(h5["videos/v1"], "labels", np.zeros((T, 3), np.uint8)),
        "video 'v1'", "'labels'", "disagrees with 'segments'",
    ),
    "labels_not_binary": (
        lambda h5: _replace(h5["videos/v1"], "labels", h5["videos/v1/labels"][()] * 2),
        "video 'v1'", "'labels'", "other than 0/1",
    ),
    "missing_labels": (lambda h5: h5["videos/v0"].__delitem__("labels"), "video 'v0'", "'labels'", "missing"),
    "missing_segments": (lambda h5: h5["videos/v0"].__delitem__("segments"), "video 'v0'", "'segments'", "missing"),
    "missing_videos": (lambda h5: h5.__delitem__("videos"), "root", "'/videos'", "missing"),
}


def test_clean_file_passes(tmp_path, capsys):
    path = _good(tmp_path / "good.h5")
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found" in out
    assert "testing 1, training 2" in out
    assert "modality rgb: dim 4, float32" in out and "modality flow: dim 2, float32" in out
    assert "T (steps): min 12, median 12, max 12, total 36" in out


def test_clean_synthetic_file_passes(synthetic_h5, capsys):
    assert main([str(synthetic_h5)]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found" in out and "problem" not in out.replace("no problems", "")


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_each_violation_is_reported(tmp_path, capsys, name):
    mutate, video, field, text = VIOLATIONS[name]
    path = _good(tmp_path / f"{name}.h5")
    with h5py.File(path, "a") as h5:
        mutate(h5)
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if str(path) in ln and video in ln and field in ln and text in ln]
    assert lines, f"no problem line naming {video}, {field}, {text!r} in:\n{out}"
    report = validate_file(path)
    assert not report.ok and any(video in p and field in p for p in report.problems)


def test_missing_labels_allowed_for_prediction_files(tmp_path):
    path = _good(tmp_path / "nolabels.h5")
    with h5py.File(path, "a") as h5:
        for g in h5["videos"].values():
            del g["labels"]
    assert main([str(path)]) == 1
    assert main([str(path), "--no-labels"]) == 0


def test_not_hdf5_missing_and_truncated(tmp_path, capsys):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    assert main([str(text)]) == 1
    assert f"{text}: not an HDF5 file" in capsys.readouterr().out
    assert main([str(tmp_path / "absent.h5")]) == 1
    assert "absent.h5: no such file" in capsys.readouterr().out
    good = _good(tmp_path / "good.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert main([str(truncated)]) == 1  # reported, never a traceback
    out = capsys.readouterr().out
    assert str(truncated) in out and "Traceback" not in out


def test_streams_in_chunks(tmp_path, monkeypatch):
    """Features and labels are read at most ``chunk_steps`` steps at a time."""
    path = _good(tmp_path / "good.h5")
    with h5py.File(path, "a") as h5:
        data = h5["videos/v2/rgb"][()]
        data[9, 0] = np.nan
        h5["videos/v2/rgb"][...] = data
    rows: list[int] = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        if self.name.rsplit("/", 1)[-1] in ("rgb", "flow", "labels"):
            rows.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    report = validate_file(path, chunk_steps=4)
    assert rows and max(rows) <= 4
    assert any("video 'v2'" in p and "first at step 9" in p for p in report.problems)


def test_summary_counts_classes(tmp_path, capsys):
    path = _good(tmp_path / "many.h5", num_classes=30, videos=3)
    report = validate_file(path)
    assert report.ok
    s = report.summary
    assert s["videos"] == 3 and s["subsets"] == {"testing": 1, "training": 2}
    assert s["steps"] == {"min": 12, "median": 12.0, "max": 12, "total": 36}
    # video i has class i over (1.5, 6.5) -> steps 2..6 (5 steps) and class i+1 over (4.2, 11) -> 5..10 (6)
    assert s["class_segments"][:4] == [1, 2, 2, 1] and sum(s["class_segments"]) == 6
    assert s["class_steps"][:4] == [5, 11, 11, 6] and sum(s["class_steps"]) == 33
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "more classes" in out and "classes with no positive step: 26" in out


def test_check_does_not_import_torch_or_lightning():
    import subprocess
    import sys

    code = ("import sys, kd_detect.data, kd_detect.data.validate, kd_detect.apps.check; "
            "print(any(m in sys.modules for m in ('torch', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("mutate, header", [
    (lambda h5: h5.attrs.__setitem__("kd_detect_format", 2),
     "  format unknown (attr 'kd_detect_format' = 2; this version reads v1), 5 videos, 3 classes; videos not checked"),
    (lambda h5: h5.attrs.__setitem__("kd_detect_format", "two"),
     "  format unknown (attr 'kd_detect_format' = 'two'; this version reads v1), 5 videos, 3 classes; "
     "videos not checked"),
    (lambda h5: h5.attrs.__delitem__("kd_detect_format"),
     "  format unknown (attr 'kd_detect_format' missing), 5 videos, 3 classes, 10 segments"),
])
def test_summary_of_an_unknown_or_missing_format_tells_the_real_counts(mutate, header, tmp_path, capsys):
    """Issue 16: before, an unknown format said "format v2, 0 videos, 0 classes" and a
    missing one printed no header at all."""
    path = _good(tmp_path / "f.h5", videos=5)
    with h5py.File(path, "r+") as h5:
        mutate(h5)
    assert main([str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"kd-detect check {path}", header]
    assert lines[-1].startswith(f"  {path}: root: attr 'kd_detect_format' ")


def test_rgb_only_file_with_rgb_shorter_than_labels_names_the_modality_and_both_T(tmp_path):
    """Issue 16: before, the labels alone were blamed ("'labels' has shape (12, 3), expected (9, 3)")."""
    rng = np.random.default_rng(0)
    rec = VideoRecord("v0", "training", float(T), {"rgb": rng.standard_normal((T, 4))}, np.array([[0, 1.5, 6.5]]))
    path = write_feature_file(tmp_path / "rgb.h5", CLASSES, ["rgb"], [rec], dtype="float32")
    with h5py.File(path, "a") as h5:
        _replace(h5["videos/v0"], "rgb", h5["videos/v0/rgb"][()][:-3].astype(np.float32))
    assert validate_file(path).problems == [
        f"{path}: video 'v0': the features and the labels differ in T: modality 'rgb' has T=9, field 'labels' T=12 "
        "(every modality and the labels share T)"]
