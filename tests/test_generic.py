"""The generic converter (data_prep.generic) and the per-video feature reader
(kd_detect.data.feature_dir), on fixtures generated here in each supported layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from data_prep import _common, generic
from data_prep._common import ConversionError
from kd_detect.data.batch import to_model_layout
from kd_detect.data.dataset import FeatureDataset, collate_videos
from kd_detect.data.feature_dir import (
    FeatureDirDataset,
    FeatureDirError,
    feature_dir_loader,
    iter_features,
    list_videos,
    load_array,
)
from kd_detect.data.format import FeatureFile, labels_from_segments
from kd_detect.data.validate import validate_file

FPS, STRIDE = 25.0, 8.0
STEP = STRIDE / FPS  # 0.32 s per step


def feats(seed: int, steps: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, dim)).astype(np.float32)


def make_folders(tmp_path, layout: str = "npy", lengths=None, flow_extra: int = 1):
    """rgb (D=6) and flow (D=4) folders; ``layout``: npy (T, D), npy4d (T,1,1,D), pt, mixed."""
    lengths = lengths or {"a": 20, "b": 30, "c": 10}
    root = tmp_path / "features"
    (root / "rgb").mkdir(parents=True)
    (root / "flow").mkdir()
    arrays = {}
    for k, (vid, steps) in enumerate(lengths.items()):
        rgb, flow = feats(k, steps, 6), feats(100 + k, steps + flow_extra, 4)
        arrays[vid] = {"rgb": rgb, "flow": flow}
        use_pt = layout == "pt" or (layout == "mixed" and k % 2 == 1)
        for name, arr in (("rgb", rgb), ("flow", flow)):
            if use_pt:
                torch.save(torch.from_numpy(arr), root / name / f"{vid}.pt")
            elif layout == "npy4d":
                np.save(root / name / f"{vid}.npy", arr.reshape(len(arr), 1, 1, -1))
            else:
                np.save(root / name / f"{vid}.npy", arr)
    return root, arrays


ROWS = [
    ("a", "walk", "1.0", "3.0", "training"),
    ("a", "sit", "2.0", "5.0", "training"),
    ("b", "", "", "", "testing"),
    ("c", "walk", "0.5", "9.0", "testing"),  # c lasts 10 * 0.32 = 3.2 s: clipped
]


def write_csv(path, rows=ROWS, header="video,label,start,end,subset"):
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def convert(tmp_path, root, **kw):
    kw.setdefault("fps", FPS)
    kw.setdefault("stride", STRIDE)
    kw.setdefault("dtype", "float32")
    return generic.convert(root, tmp_path / "out.h5", **kw)


# ---------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("layout", ["npy", "npy4d", "pt", "mixed"])
def test_each_layout_converts_to_a_file_that_passes_check(tmp_path, layout):
    root, arrays = make_folders(tmp_path, layout)
    summary = convert(tmp_path, root, annotations=write_csv(tmp_path / "ann.csv"))
    assert validate_file(tmp_path / "out.h5").problems == []
    f = FeatureFile(tmp_path / "out.h5")
    assert f.classes == ["sit", "walk"]  # sorted without --classes
    assert f.modalities == ["rgb", "flow"]  # rgb first: the reference
    assert f.subsets == {"a": "training", "b": "testing", "c": "testing"}
    for vid, arr in arrays.items():
        got = f.read(vid, ["rgb", "flow"])
        np.testing.assert_array_equal(got["rgb"], arr["rgb"])
        np.testing.assert_array_equal(got["flow"], arr["flow"][: len(arr["rgb"])])  # 1 extra step truncated
        assert f.durations[vid] == pytest.approx(len(arr["rgb"]) * STEP)
    np.testing.assert_allclose(f.segments("a"), [[1, 1.0, 3.0], [0, 2.0, 5.0]])
    np.testing.assert_allclose(f.segments("c"), [[1, 0.5, 3.2]])  # clipped to the duration
    assert f.segments("b").shape == (0, 3)
    # labels follow the strict rule: step i of a at t_i = 0.32 i
    labels = f.read("a", ["labels"])["labels"]
    t = np.arange(20) * STEP
    np.testing.assert_array_equal(labels[:, 1], (t > 1.0) & (t < 3.0))
    np.testing.assert_array_equal(labels[:, 0], (t > 2.0) & (t < 5.0))
    assert summary.truncated_videos == 3 and summary.segments_clipped == 1 and summary.segments_kept == 3


def test_named_modality_folders_json_annotations_and_class_file_order(tmp_path):
    root, arrays = make_folders(tmp_path, flow_extra=0)
    rows = [{"video": v, "label": lab, "start": float(s) if s else None, "end": float(e) if e else None,
             "subset": sub} for v, lab, s, e, sub in ROWS]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(rows))
    (tmp_path / "classes.txt").write_text("walk\nsit\nrun\n")
    convert(tmp_path, None, modality=[f"flow={root / 'flow'}", f"rgb={root / 'rgb'}"], annotations=ann,
            classes=tmp_path / "classes.txt")
    f = FeatureFile(tmp_path / "out.h5")
    assert f.classes == ["walk", "sit", "run"] and f.modalities == ["flow", "rgb"]
    np.testing.assert_allclose(f.segments("a"), [[0, 1.0, 3.0], [1, 2.0, 5.0]])
    # flow is the reference now: the duration comes from its T
    assert f.durations["b"] == pytest.approx(30 * STEP)
    assert validate_file(tmp_path / "out.h5").problems == []


def test_frames_and_seconds_give_the_same_file(tmp_path):
    root, _ = make_folders(tmp_path, flow_extra=0)
    seconds = [("a", "walk", "1.2", "3.4", "training", "6.4"), ("a", "sit", "0", "2", "training", "6.4"),
               ("b", "walk", "4.8", "9.6", "testing", "9.6")]
    frames = [(v, lab, f"{float(s) * FPS:g}", f"{float(e) * FPS:g}", sub, f"{float(d) * FPS:g}")
              for v, lab, s, e, sub, d in seconds]
    header = "video,label,start,end,subset,duration"
    files = {}
    for units, rows in (("seconds", seconds), ("frames", frames)):
        out = tmp_path / f"{units}.h5"
        generic.convert(root, out, annotations=write_csv(tmp_path / f"{units}.csv", rows, header),
                        units=units, fps=FPS, dtype="float32")
        files[units] = FeatureFile(out)
    assert frames[0][2:4] == ("30", "85") and frames[0][5] == "160"
    s, fr = files["seconds"], files["frames"]
    assert s.durations == pytest.approx(fr.durations) and s.durations["b"] == pytest.approx(9.6)
    for vid in ("a", "b"):
        np.testing.assert_allclose(s.segments(vid), fr.segments(vid), atol=1e-12)
        np.testing.assert_array_equal(s.read(vid, ["labels"])["labels"], fr.read(vid, ["labels"])["labels"])
    np.testing.assert_allclose(fr.segments("a"), [[1, 1.2, 3.4], [0, 0.0, 2.0]], atol=1e-12)


def test_duration_sources_annotation_then_metadata_then_steps(tmp_path):
    root, _ = make_folders(tmp_path, flow_extra=0)
    rows = [("a", "walk", "1", "2", "training", "7.5"), ("b", "walk", "1", "2", "testing", ""),
            ("c", "walk", "1", "2", "testing", "")]
    ann = write_csv(tmp_path / "ann.csv", rows, "video,label,start,end,subset,duration")
    (tmp_path / "meta.csv").write_text("video,duration,fps\na,99,25\nb,8.25,25\n")
    convert(tmp_path, root, annotations=ann, metadata=tmp_path / "meta.csv")
    f = FeatureFile(tmp_path / "out.h5")
    assert f.durations["a"] == 7.5  # the annotation wins over the table
    assert f.durations["b"] == 8.25  # the table
    assert f.durations["c"] == pytest.approx(10 * STEP)  # T x stride / fps


def test_splits_file_instead_of_subset_column(tmp_path):
    root, _ = make_folders(tmp_path, flow_extra=0)
    rows = [(v, lab, s, e) for v, lab, s, e, _ in ROWS]
    ann = write_csv(tmp_path / "ann.csv", rows, "video,label,start,end")
    (tmp_path / "split.txt").write_text("a training\nb,test\nz testing\n")
    summary = convert(tmp_path, root, annotations=ann, splits=tmp_path / "split.txt")
    f = FeatureFile(tmp_path / "out.h5")
    assert f.subsets == {"a": "training", "b": "testing"}
    assert summary.skipped == {
        "annotated but not in the split file": 1,
        "in the split file but without an annotation row": 1,
    }
    assert summary.skipped_examples["annotated but not in the split file"] == ["c"]


# ------------------------------------------------------------------ counted problems
def test_problems_in_the_data_are_counted_and_named_in_the_summary(tmp_path):
    root, _ = make_folders(tmp_path, lengths={"a": 20, "b": 30, "c": 10, "d": 12, "e": 8}, flow_extra=0)
    (root / "flow" / "b.npy").unlink()  # missing feature file
    np.save(root / "flow" / "c.npy", feats(7, 16, 4))  # c: rgb 10, flow 16: unequal T beyond 2
    rows = [("a", "walk", "1", "2", "training"), ("a", "walk", "50", "60", "training"),  # outside a (6.4 s)
            ("b", "walk", "1", "2", "testing"), ("c", "walk", "1", "2", "testing"),
            ("d", "", "", "", "testing"), ("x", "walk", "1", "2", "testing")]  # x: no features at all
    summary = convert(tmp_path, root, annotations=write_csv(tmp_path / "ann.csv", rows))
    assert summary.videos_written == 2
    assert summary.skipped == {
        "missing flow features": 1,
        "modality lengths differ by more than 2 steps": 1,
        "missing rgb features": 1,
        "feature file without an annotation row (ignored)": 1,
    }
    assert summary.skipped_examples["missing flow features"] == ["b"]
    assert summary.skipped_examples["feature file without an annotation row (ignored)"] == ["e"]
    assert summary.segments_dropped == {"outside the video": 1}
    text = summary.format()
    assert "missing flow features: 1 (e.g. b)" in text and "1 dropped (outside the video)" in text


def test_unannotated_feature_files_can_be_kept_as_unlabelled_videos(tmp_path):
    """``--unannotated unlabelled``: the feature files no annotation row names become videos
    of subset ``unlabelled`` without labels or segments (check passes; a student's loader
    adds them without labels), the annotated ones are converted as without the option."""
    from kd_detect.data.datamodule import FeatureDataModule

    root, arrays = make_folders(tmp_path, lengths={"a": 20, "b": 30, "c": 10, "e": 12}, flow_extra=0)
    summary = convert(tmp_path, root, annotations=write_csv(tmp_path / "ann.csv"), unannotated="unlabelled")
    assert summary.videos_written == 4 and summary.skipped == {}
    assert dict(summary.per_subset) == {"training": 1, "testing": 2, "unlabelled": 1}
    ff = FeatureFile(tmp_path / "out.h5")
    assert ff.subsets["e"] == "unlabelled" and math.isclose(ff.durations["e"], 12 * STEP)
    assert np.array_equal(ff.read("e", ["rgb"])["rgb"], arrays["e"]["rgb"])
    assert "labels" not in ff.h5["videos"]["e"] and "segments" not in ff.h5["videos"]["e"]
    assert validate_file(tmp_path / "out.h5").ok
    dm = FeatureDataModule(str(tmp_path / "out.h5"), val_subset="testing", unlabelled_subset="unlabelled")
    assert dm.unlabelled_videos == ["e"] and dm.training_videos == ["a", "e"]
    with pytest.raises(ConversionError, match="--unannotated must be one of"):
        convert(tmp_path, root, annotations=write_csv(tmp_path / "ann.csv"), unannotated="keep")


def test_malformed_feature_file_is_a_counted_skip(tmp_path):
    root, _ = make_folders(tmp_path, flow_extra=0)
    np.save(root / "rgb" / "b.npy", np.zeros((5, 2, 3), dtype=np.float32))  # (T, 2, 3): not (T, D)
    (root / "flow" / "c.npy").write_bytes(b"not numpy")
    summary = convert(tmp_path, root, annotations=write_csv(tmp_path / "ann.csv"))
    assert summary.skipped == {
        "unreadable or malformed rgb feature file (expected a (T, D) array)": 1,
        "unreadable or malformed flow feature file (expected a (T, D) array)": 1,
    }


# ------------------------------------------------------------------------- refusals
REFUSALS = [
    # (rows / header mutation, extra kwargs, fragments of the one-line message)
    ("header", {}, ["ann.csv:1", "column 'end'"]),
    ("start_text", {}, ["ann.csv:2", "video 'a'", "field 'start'", "'soon'", "expected a number"]),
    ("unknown_label", {"classes": "classes"}, ["ann.csv:3", "video 'a'", "field 'label'", "'sit'", "class list"]),
    ("bad_subset", {}, ["ann.csv:4", "video 'b'", "field 'subset'", "'val'"]),
    ("conflicting_subset", {}, ["ann.csv:3", "video 'a'", "field 'subset'"]),
    ("no_subset", {}, ["ann.csv:2", "video 'a'", "no subset", "--splits"]),
    ("subset_and_splits", {"splits": "splits"}, ["ann.csv:2", "--splits"]),
    ("no_duration", {"fps": None}, ["ann.csv:2", "video 'a'", "no duration", "--fps and --stride"]),
    ("frames_without_fps", {"units": "frames", "fps": None}, ["--units frames needs --fps"]),
    ("bad_duration", {}, ["ann.csv:2", "video 'a'", "field 'duration'", "'long'"]),
]


def _refusal_input(tmp_path, case):
    header = "video,label,start,end,subset"
    rows = [list(r) for r in ROWS]
    if case == "header":
        header = "video,label,start,stop,subset"
    elif case == "start_text":
        rows[0][2] = "soon"
    elif case == "bad_subset":
        rows[2][4] = "val"
    elif case == "conflicting_subset":
        rows[1][4] = "testing"
    elif case == "no_subset":
        rows = [r[:4] for r in rows]
        header = "video,label,start,end"
    elif case == "bad_duration":
        header += ",duration"
        rows = [r + ["long"] for r in rows]
    return write_csv(tmp_path / "ann.csv", [tuple(r) for r in rows], header)


@pytest.mark.parametrize("case, extra, fragments", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_input_is_refused_with_one_line_naming_file_video_and_field(tmp_path, case, extra, fragments):
    root, _ = make_folders(tmp_path, flow_extra=0)
    (tmp_path / "classes").write_text("walk\n")
    (tmp_path / "splits").write_text("a training\n")
    kw = {k: (tmp_path / v if k in ("classes", "splits") else v) for k, v in extra.items()}
    with pytest.raises(ConversionError) as err:
        convert(tmp_path, root, annotations=_refusal_input(tmp_path, case), **kw)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out.h5").exists()


def test_folder_refusals_name_the_folder_or_file(tmp_path):
    root, _ = make_folders(tmp_path)
    ann = write_csv(tmp_path / "ann.csv")
    with pytest.raises(ConversionError, match=r"nowhere: flow feature folder not found"):
        convert(tmp_path, None, modality=[f"rgb={root / 'rgb'}", f"flow={tmp_path / 'nowhere'}"], annotations=ann)
    torch.save(torch.zeros(3, 4), root / "flow" / "a.pt")
    with pytest.raises(ConversionError, match=r"a\.pt: video 'a' has two flow feature files \(a\.npy and a\.pt\)"):
        convert(tmp_path, root, annotations=ann)
    with pytest.raises(ConversionError, match=r"--modality-stride expects NAME=S with NAME one of"):
        convert(tmp_path, root, annotations=ann, modality_stride=["pose=4"])


def test_cli_exits_nonzero_with_one_line_and_make_raw_layout_works(tmp_path, capsys):
    root, _ = make_folders(tmp_path, flow_extra=0)
    ann = write_csv(tmp_path / "ann.csv", [("a", "walk", "x", "2", "training")])
    out = tmp_path / "data" / "generic.h5"
    base = ["--raw", str(root), "--out", str(out), "--fps", "25", "--stride", "8"]
    with pytest.raises(SystemExit) as exc:
        generic.main(base + ["--annotations", str(ann)])
    assert exc.value.code.startswith("python -m data_prep.generic: error: ")
    assert "field 'start' is 'x'" in exc.value.code and "\n" not in exc.value.code
    assert not out.exists()
    # what `make data DATASET=generic RAW=root ARGS="--annotations ..."` runs
    assert generic.main(base + ["--annotations", str(write_csv(tmp_path / "ok.csv")), "--dtype", "float32"]) == 0
    assert "generic: wrote 3 videos" in capsys.readouterr().out
    assert FeatureFile(out).modalities == ["rgb", "flow"]


# ------------------------------------------------------------------------ resampling
def test_resample_to_reference_is_nearest_by_time_and_checks_the_rate():
    rgb = np.arange(5, dtype=np.float32)[:, None]
    pose = np.arange(11, dtype=np.float32)[:, None] * 10  # stride 4 against rgb's 8: 2 steps per rgb step
    out = _common.resample_to_reference({"rgb": rgb, "pose": pose}, "rgb", {"pose": 2.0}, 2)
    # row i = pose[floor(i * 11 / 5)]: 0, 2, 4, 6, 8
    assert out["pose"][:, 0].tolist() == [0, 20, 40, 60, 80]
    assert out["rgb"] is rgb
    up = _common.resample_to_reference({"rgb": rgb, "pose": pose[:3]}, "rgb", {"pose": None}, 0)
    assert up["pose"][:, 0].tolist() == [0, 0, 10, 10, 20]  # floor(i * 3 / 5)
    # 2 x 5 = 10 expected; 15 is 5 off > 2 * max(1, 2) = 4
    with pytest.raises(_common.SkipVideo, match=r"pose has 15 steps, expected about 2 x 5 rgb steps"):
        _common.resample_to_reference({"rgb": rgb, "pose": np.zeros((15, 1))}, "rgb", {"pose": 2.0}, 2)
    same = _common.resample_to_reference({"rgb": rgb, "pose": np.zeros((14, 1))}, "rgb", {"pose": 2.0}, 2)
    assert same["pose"].shape == (5, 1)  # 4 off: within the tolerance


def test_converter_resamples_a_modality_at_another_stride(tmp_path):
    root, arrays = make_folders(tmp_path, lengths={"a": 10, "b": 7}, flow_extra=0)
    (root / "pose").mkdir()
    pose = {"a": feats(50, 20, 3), "b": feats(51, 30, 3)}  # b: 30 vs 2 x 7 = 14 expected -> skipped
    for vid, arr in pose.items():
        np.save(root / "pose" / f"{vid}.npy", arr)
    rows = [("a", "walk", "1", "2", "training"), ("b", "walk", "1", "2", "testing")]
    summary = convert(tmp_path, root, annotations=write_csv(tmp_path / "ann.csv", rows),
                      modality=["rgb", "pose"], modality_stride=["pose=4"])
    f = FeatureFile(tmp_path / "out.h5")
    assert f.modalities == ["rgb", "pose"] and f.video_ids == ["a"]
    np.testing.assert_array_equal(f.read("a", ["pose"])["pose"], pose["a"][::2])  # floor(i * 20 / 10) = 2i
    assert summary.skipped == {"modality lengths differ by more than 2 steps "
                               "(pose has 30 steps, expected about 2 x 7 rgb steps)": 1}


# ------------------------------------------------------------------------ unlabelled
def test_unlabelled_file_for_prediction(tmp_path):
    root, arrays = make_folders(tmp_path, flow_extra=0)
    (tmp_path / "classes.txt").write_text("walk\nsit\n")
    with pytest.raises(ConversionError, match="needs --classes FILE"):
        convert(tmp_path, root, modality=["rgb"])
    summary = convert(tmp_path, root, modality=["rgb"], classes=tmp_path / "classes.txt", dtype="float16")
    assert summary.videos_written == 3 and summary.per_subset == {"unlabelled": 3}
    path = tmp_path / "out.h5"
    f = FeatureFile(path)
    assert int(f.attrs["labelled"]) == 0 and f.classes == ["walk", "sit"] and f.modalities == ["rgb"]
    assert "labels" not in f.h5["videos/a"] and "segments" not in f.h5["videos/a"]
    assert validate_file(path, require_labels=False).problems == []
    assert validate_file(path).problems == []  # subset 'unlabelled' may lack annotations in any file
    other = generic.convert(root, tmp_path / "extra.h5", modality=["rgb"], classes=tmp_path / "classes.txt",
                            subset="extra", fps=FPS, stride=STRIDE)
    assert other.per_subset == {"extra": 3}
    problems = validate_file(tmp_path / "extra.h5").problems  # any other subset is training data: labels needed
    assert sorted(p.split(": ", 2)[2][:24] for p in problems) == sorted(
        ["field 'segments' missing", "field 'labels' missing ("] * 3
    )
    # the HDF5 prediction items equal the feature-folder items (float16 as stored)
    hdf5 = FeatureDataset(f, f.video_ids, ["rgb"], require_labels=False)
    folder = FeatureDirDataset(root / "rgb", "rgb", step_seconds=STEP, dtype="float16")
    assert folder.video_ids == hdf5.video_ids == ["a", "b", "c"]
    for k in range(3):
        a, b = hdf5[k], folder[k]
        assert a["features"]["rgb"].dtype == b["features"]["rgb"].dtype == np.float16
        np.testing.assert_array_equal(a["features"]["rgb"], b["features"]["rgb"])
        assert a["labels"] is None and b["labels"] is None
        assert (a["video_id"], a["length"], a["offset"]) == (b["video_id"], b["length"], b["offset"])
        assert a["duration"] == pytest.approx(b["duration"])
        assert a["segments"].shape == b["segments"].shape == (0, 3)
    ours = collate_videos([folder[k] for k in range(3)], 2)
    theirs = collate_videos([hdf5[k] for k in range(3)], 2)
    assert torch.equal(ours["rgb"], theirs["rgb"]) and torch.equal(ours["mask"], theirs["mask"])
    assert ours["meta"]["video_id"] == theirs["meta"]["video_id"]
    assert torch.allclose(ours["meta"]["duration"], theirs["meta"]["duration"])


# ------------------------------------------------------------------------ feature_dir
def test_feature_dir_lists_reads_and_batches(tmp_path):
    root, arrays = make_folders(tmp_path, "mixed")
    assert list(list_videos(root / "rgb")) == ["a", "b", "c"]
    got = dict(iter_features(root / "rgb", modality="rgb"))
    for vid in ("a", "b", "c"):
        assert got[vid].dtype == np.float32
        np.testing.assert_array_equal(got[vid], arrays[vid]["rgb"])
    loader = feature_dir_loader(root / "rgb", num_classes=3, batch_size=2, durations={"a": 1.0, "b": 2.0, "c": 3.0})
    batches = list(loader)
    assert [b["meta"]["video_id"] for b in batches] == [["a", "b"], ["c"]]
    first = to_model_layout(batches[0])  # the host batch keeps (B, T, D); heads see (B, D, T)
    assert batches[0]["rgb"].shape == (2, 30, 6)
    assert first["rgb"].shape == (2, 6, 30) and first["labels"].shape == (2, 3, 30)
    assert first["mask"].sum(1).tolist() == [20, 30] and first["labels"].abs().sum() == 0
    assert torch.equal(first["rgb"][0, :, :20], torch.from_numpy(arrays["a"]["rgb"]).t())
    assert first["rgb"][0, :, 20:].abs().sum() == 0  # padding
    assert first["meta"]["duration"].tolist() == [1.0, 2.0]


def test_feature_dir_refusals_name_file_video_and_expectation(tmp_path):
    d = tmp_path / "rgb"
    with pytest.raises(FeatureDirError, match=r"rgb: rgb feature folder not found"):
        list_videos(d, "rgb")
    d.mkdir()
    (d / "notes.txt").write_text("x")
    with pytest.raises(FeatureDirError, match=r"no rgb feature files \(expected <video_id>\.npy or \.pt"):
        list_videos(d, "rgb")
    np.save(d / "v1.npy", np.ones((4, 3), dtype=np.float32))
    np.save(d / "v2.npy", np.ones((4, 5), dtype=np.float32))
    with pytest.raises(FeatureDirError, match=r"v2\.npy: video 'v2': rgb features: dim 5, expected 3"):
        list(iter_features(d, modality="rgb"))
    bad = {
        "v3.npy": (np.ones((4, 2, 3)), r"shape \(4, 2, 3\), expected a 2-D \(T, D\) array"),
        "v4.npy": (np.array(["a", "b"]), r"dtype <U1, expected a numeric"),
        "v5.npy": (np.zeros((0, 3)), r"shape \(0, 3\)"),
    }
    for name, (arr, pattern) in bad.items():
        np.save(d / name, arr)
        with pytest.raises(FeatureDirError, match=rf"{name}: video '{name[:2]}': rgb features: {pattern}"):
            load_array(d / name, modality="rgb")
    torch.save({"x": torch.zeros(2, 3)}, d / "v6.pt")
    with pytest.raises(FeatureDirError, match=r"v6\.pt: video 'v6': rgb features: the \.pt file holds a dict"):
        load_array(d / "v6.pt", modality="rgb")
    nan = np.ones((6, 3), dtype=np.float32)
    nan[4, 1] = np.nan
    np.save(d / "v7.npy", nan)
    with pytest.raises(FeatureDirError, match=r"v7\.npy: video 'v7': rgb features: non-finite .* first at step 4"):
        list(iter_features(d, ["v1", "v7"], modality="rgb"))
    with pytest.raises(FeatureDirError, match=r"video 'zz': rgb feature file not found"):
        FeatureDirDataset(d, "rgb", video_ids=["v1", "zz"], step_seconds=0.3)
    with pytest.raises(FeatureDirError, match=r"video 'v1': no duration \(give step_seconds"):
        FeatureDirDataset(d, "rgb", video_ids=["v1"])
    assert math.isclose(FeatureDirDataset(d, "rgb", video_ids=["v1"], step_seconds=0.3)[0]["duration"], 1.2)


def test_labels_of_a_converted_file_match_the_format_rule(tmp_path):
    root, _ = make_folders(tmp_path, flow_extra=0)
    convert(tmp_path, root, annotations=write_csv(tmp_path / "ann.csv"))
    f = FeatureFile(tmp_path / "out.h5")
    for vid in f.video_ids:
        want = labels_from_segments(f.segments(vid), f.lengths[vid], f.durations[vid], 2)
        np.testing.assert_array_equal(f.read(vid, ["labels"])["labels"], want)


def test_unlabelled_writer_refuses_segments_and_training_reader_names_missing_labels(tmp_path):
    from kd_detect.data.format import FeatureFileError, FeatureFileWriter, VideoRecord

    path = tmp_path / "u.h5"
    with pytest.raises(FeatureFileError, match=r"u\.h5: video 'v': an unlabelled file takes no 'segments'"):
        with FeatureFileWriter(path, ["a"], ["rgb"], labelled=False) as w:
            w.add(VideoRecord("v", "unlabelled", 2.0, {"rgb": np.ones((4, 3))}, np.array([[0, 0.5, 1.0]])))
    assert not path.exists()
    with FeatureFileWriter(path, ["a"], ["rgb"], labelled=False) as w:
        w.add(VideoRecord("v", "extra", 2.0, {"rgb": np.ones((4, 3))}))
        w.add(VideoRecord("u", "unlabelled", 2.0, {"rgb": np.ones((4, 3))}))
    f = FeatureFile(path)
    with pytest.raises(FeatureFileError, match=r"u\.h5: video 'v': field 'labels' missing"):
        FeatureDataset(f, ["v", "u"], ["rgb"])[0]
    item = FeatureDataset(f, ["v", "u"], ["rgb"])[1]  # subset 'unlabelled' is allowed no labels
    assert item["labels"] is None and item["labelled"] is False


def test_split_and_metadata_file_refusals(tmp_path):
    root, _ = make_folders(tmp_path, flow_extra=0)
    rows = [(v, lab, s, e) for v, lab, s, e, _ in ROWS]
    ann = write_csv(tmp_path / "ann.csv", rows, "video,label,start,end")
    split = tmp_path / "split.txt"
    cases = [
        ("a training\na testing\n", r"split\.txt:2: video 'a' listed twice"),
        ("a training\nb validation\n", r"split\.txt:2: video 'b': subset 'validation', expected one of"),
        ("a training extra\n", r"split\.txt:1: expected '<video_id> <subset>'"),
    ]
    for text, pattern in cases:
        split.write_text(text)
        with pytest.raises(ConversionError, match=pattern):
            convert(tmp_path, root, annotations=ann, splits=split)
    split.write_text("a training\nb testing\nc testing\n")
    meta = tmp_path / "meta.csv"
    meta.write_text("id,length\na,3\n")
    with pytest.raises(ConversionError, match=r"meta\.csv:1: header must name columns video and duration"):
        convert(tmp_path, root, annotations=ann, splits=split, metadata=meta)
    meta.write_text("video,duration\na,three\n")
    with pytest.raises(ConversionError, match=r"meta\.csv:2: video 'a': field 'duration' is 'three'"):
        convert(tmp_path, root, annotations=ann, splits=split, metadata=meta)
    with pytest.raises(ConversionError, match=r"nope\.csv: split file not found"):
        convert(tmp_path, root, annotations=ann, splits=tmp_path / "nope.csv")
