"""HDF5 format v1 (DESIGN.md §4): writer, reader, label rule."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from kd_detect.data.format import (
    FeatureFile,
    FeatureFileError,
    FeatureFileWriter,
    VideoRecord,
    labels_from_segments,
    step_times,
    write_feature_file,
)

CLASSES = ["a", "b", "c"]


def _video(vid: str, steps: int = 10, subset: str = "training", seed: int = 0, **kw) -> VideoRecord:
    rng = np.random.default_rng(seed)
    feats = {"rgb": rng.standard_normal((steps, 4)), "flow": rng.standard_normal((steps, 2))}
    return VideoRecord(vid, subset, float(steps), feats, kw.pop("segments", np.array([[0, 1.5, 4.5]])), **kw)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- label rule
def test_label_rule_is_strict_on_both_ends():
    # duration 10 s, T = 10 -> step i sits at t_i = i seconds exactly
    segments = np.array([[0, 2.0, 5.0], [1, 2.5, 2.9], [2, 3.0, 3.0], [1, 0.0, 1.0]])
    labels = labels_from_segments(segments, num_steps=10, duration=10.0, num_classes=3)
    assert labels.dtype == np.uint8 and labels.shape == (10, 3)
    assert np.flatnonzero(labels[:, 0]).tolist() == [3, 4]  # 2 and 5 are on the boundary: excluded
    assert labels[:, 1].sum() == 0  # (2.5, 2.9) holds no step; (0, 1) excludes both t=0 and t=1
    assert labels[:, 2].sum() == 0  # zero-length segment


def test_label_rule_uses_duration_over_T_and_overlaps():
    # T = 4, duration 2 s -> t = 0, .5, 1, 1.5
    segments = np.array([[0, 0.2, 1.2], [1, 0.9, 2.0]])
    labels = labels_from_segments(segments, 4, 2.0, 2)
    assert labels.tolist() == [[0, 0], [1, 0], [1, 1], [0, 1]]
    assert np.allclose(step_times(4, 2.0), [0, 0.5, 1.0, 1.5])


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, dtype):
    videos = [_video("v1", 10, seed=1), _video("v2", 7, "testing", seed=2, segments=np.zeros((0, 3)))]
    videos[0].attrs["source"] = "unit"
    path = write_feature_file(tmp_path / "f.h5", CLASSES, ["rgb", "flow"], videos, dtype=dtype, attrs={"x": 3})
    assert _leftovers(tmp_path) == ["f.h5"]
    ff = FeatureFile(path)
    assert ff.classes == CLASSES and ff.num_classes == 3
    assert ff.modalities == ["rgb", "flow"]
    assert ff.video_ids == ["v1", "v2"]
    assert ff.subsets == {"v1": "training", "v2": "testing"}
    assert ff.durations == {"v1": 10.0, "v2": 7.0}
    assert ff.lengths == {"v1": 10, "v2": 7}
    assert ff.modality_dims == {"rgb": 4, "flow": 2}
    assert ff.videos_in("testing") == ["v2"] and ff.videos_in(["training", "testing"]) == ["v1", "v2"]
    assert ff.videos_in(None) == ["v1", "v2"] and ff.videos_in("nope") == []
    assert int(ff.attrs["x"]) == 3
    rec = ff.record("v1")
    for m in ("rgb", "flow"):
        assert rec.features[m].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(rec.features[m], videos[0].features[m].astype(dtype))
    # labels derived from segments by the strict rule
    np.testing.assert_array_equal(rec.labels, labels_from_segments(videos[0].segments, 10, 10.0, 3))
    assert rec.labels[:, 0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(ff.segments("v1"), [[0, 1.5, 4.5]])
    assert ff.segments("v2").shape == (0, 3)
    window = ff.read("v1", ["rgb", "labels"], 3, 6)
    np.testing.assert_array_equal(window["rgb"], videos[0].features["rgb"][3:6].astype(dtype))
    assert window["labels"].shape == (3, 3)
    with h5py.File(path, "r") as h5:
        assert h5["videos/v1"].attrs["source"] == "unit"
        assert h5["videos/v1/segments"].dtype == np.float64


def test_explicit_labels_are_kept(tmp_path):
    labels = np.zeros((10, 3), dtype=np.uint8)
    labels[0, 2] = 1
    path = write_feature_file(tmp_path / "f.h5", CLASSES, ["rgb", "flow"], [_video("v", labels=labels)])
    np.testing.assert_array_equal(FeatureFile(path).record("v").labels, labels)


def test_final_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_feature_file(tmp_path / "f.h5", CLASSES, ["rgb", "flow"], [_video("v")])
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


# --------------------------------------------------------------------------- atomicity
def test_exception_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureFileWriter(tmp_path / "f.h5", CLASSES, ["rgb", "flow"]) as w:
            w.add(_video("v1"))
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_exception_keeps_previous_file_intact(tmp_path):
    path = write_feature_file(tmp_path / "f.h5", CLASSES, ["rgb", "flow"], [_video("old")])
    with pytest.raises(FeatureFileError):
        write_feature_file(path, CLASSES, ["rgb", "flow"], [_video("new"), _video("new")])  # duplicate id
    assert _leftovers(tmp_path) == ["f.h5"]
    assert FeatureFile(path).video_ids == ["old"]


def test_caught_add_error_leaves_no_partial_video(tmp_path):
    with FeatureFileWriter(tmp_path / "f.h5", CLASSES, ["rgb", "flow"]) as w:
        w.add(_video("good"))
        bad = _video("bad")
        bad.features["flow"] = np.zeros((10, 5))  # dim 5, other videos have 2
        with pytest.raises(FeatureFileError, match=r"'bad'.*'flow'.*dim 5"):
            w.add(bad)
        w.add(_video("good2"))
    assert FeatureFile(tmp_path / "f.h5").video_ids == ["good", "good2"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda v: v.features.pop("flow"), r"'v'.*missing modalities \['flow'\]"),
        (lambda v: v.features.update(flow=np.zeros((9, 2))), r"'v'.*different T"),
        (lambda v: v.features.update(rgb=np.zeros((0, 4)), flow=np.zeros((0, 2))), r"'v'.*zero-length"),
        (lambda v: setattr(v, "duration", 0.0), r"'v'.*'duration'"),
        (lambda v: setattr(v, "segments", np.array([[3, 1, 2]])), r"'v'.*'segments'.*class id"),
        (lambda v: setattr(v, "segments", np.array([[0.5, 1, 2]])), r"'v'.*'segments'.*integer"),
        (lambda v: setattr(v, "segments", np.array([[0, 3, 2]])), r"'v'.*'segments'.*start > end"),
        (lambda v: setattr(v, "segments", np.array([[0, np.nan, 2]])), r"'v'.*'segments'.*non-finite"),
        (lambda v: setattr(v, "segments", np.zeros((2, 2))), r"'v'.*'segments'.*\(N, 3\)"),
        (lambda v: setattr(v, "labels", np.zeros((10, 2))), r"'v'.*'labels'.*\(10, 3\)"),
        (lambda v: v.features.update(rgb=np.zeros((10, 4, 1))), r"'v'.*'rgb'.*\(T, D\)"),
    ],
)
def test_writer_rejects_bad_video(tmp_path, mutate, match):
    video = _video("v")
    mutate(video)
    with pytest.raises(FeatureFileError, match=match):
        write_feature_file(tmp_path / "f.h5", CLASSES, ["rgb", "flow"], [video])
    assert _leftovers(tmp_path) == []


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        FeatureFileWriter(tmp_path / "f.h5", CLASSES, ["rgb"], dtype="float64")
    with pytest.raises(ValueError, match="reserved"):
        FeatureFileWriter(tmp_path / "f.h5", CLASSES, ["labels"])
    with pytest.raises(ValueError, match="unique"):
        FeatureFileWriter(tmp_path / "f.h5", CLASSES, ["rgb", "rgb"])
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- reader errors
@pytest.fixture
def good_file(tmp_path) -> Path:
    return write_feature_file(tmp_path / "good.h5", CLASSES, ["rgb", "flow"], [_video("v1"), _video("v2")])


def test_reader_missing_and_non_hdf5(tmp_path):
    with pytest.raises(FeatureFileError, match=r"nope\.h5: no such feature file"):
        FeatureFile(tmp_path / "nope.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(FeatureFileError, match=r"text\.h5: not a readable HDF5"):
        FeatureFile(text)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda h5: h5.attrs.__delitem__("kd_detect_format"), r"'kd_detect_format' missing"),
        (lambda h5: h5.attrs.__setitem__("kd_detect_format", 2), r"unknown kd_detect_format=.*2"),
        (lambda h5: h5.attrs.__setitem__("kd_detect_format", "one"), r"unknown kd_detect_format=.*one"),
        (lambda h5: h5.attrs.__delitem__("classes"), r"root attr 'classes' missing"),
        (lambda h5: h5.attrs.__delitem__("modalities"), r"root attr 'modalities' missing"),
        (lambda h5: h5.attrs.__setitem__("classes", "abc"), r"'classes' must be a non-empty list"),
        (lambda h5: h5["videos/v2"].attrs.__delitem__("subset"), r"video 'v2': attr 'subset' missing"),
        (lambda h5: h5["videos/v1"].attrs.__delitem__("duration"), r"video 'v1': attr 'duration' missing"),
        (lambda h5: h5["videos/v2"].__delitem__("rgb"), r"video 'v2': modality 'rgb' missing"),
        (lambda h5: h5.__delitem__("videos"), r"group '/videos' missing"),
    ],
)
def test_reader_refuses_broken_header(good_file, mutate, match):
    with h5py.File(good_file, "a") as h5:
        mutate(h5)
    with pytest.raises(FeatureFileError, match=match) as err:
        FeatureFile(good_file)
    assert str(good_file) in str(err.value)


def test_reader_field_errors(good_file):
    ff = FeatureFile(good_file)
    with pytest.raises(FeatureFileError, match=r"video 'zz' not in file"):
        ff.read("zz", ["rgb"])
    with pytest.raises(FeatureFileError, match=r"video 'v1': field 'pose' missing"):
        ff.read("v1", ["pose"])


def test_reader_pickles_without_handle(good_file):
    import pickle

    ff = FeatureFile(good_file)
    ff.read("v1", ["rgb"])  # opens the handle
    clone = pickle.loads(pickle.dumps(ff))
    np.testing.assert_array_equal(clone.read("v1", ["rgb"])["rgb"], ff.read("v1", ["rgb"])["rgb"])
    ff.close()
