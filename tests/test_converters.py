"""Real-dataset converters (data_prep/) against fixtures in the exact release formats."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_prep import _common, charades, multithumos, pku_mmd, tsu
from data_prep._annotations import read_class_names
from data_prep._common import ConversionError, ConversionSummary
from kd_detect.data.format import FeatureFile
from tests.helpers.fixtures_release import (
    CHARADES_COLUMNS,
    FixtureVideo,
    charades_plan,
    charades_steps,
    make_charades_raw,
    make_multithumos_raw,
    make_pku_mmd_raw,
    make_tsu_raw,
    multithumos_plan,
    multithumos_steps,
    pku_plan,
    tsu_plan,
    write_charades_raw,
    write_multithumos_raw,
    write_pku_raw,
    write_tsu_raw,
)

REPO = Path(__file__).resolve().parents[1]


def checked(path: Path) -> FeatureFile:
    """Open a converted file, asserting the project validator finds no problem."""
    try:
        from kd_detect.data.validate import validate_file
    except ImportError:  # validator not merged yet: the reader's own checks only
        validate_file = None
    if validate_file is not None:
        assert validate_file(path).problems == []
    return FeatureFile(path)


def segs(f: FeatureFile, vid: str) -> list[list[float]]:
    return np.round(f.segments(vid), 9).tolist()


def assert_segments(f: FeatureFile, vid: str, expected) -> None:
    got = f.segments(vid)
    expected = np.asarray(expected, dtype=np.float64).reshape(-1, 3)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def feats(f: FeatureFile, vid: str, modality: str) -> np.ndarray:
    return f.read(vid, [modality])[modality]


# ------------------------------------------------------------------- common rules

def test_clean_segments_applies_each_rule_in_order_and_counts_it():
    summary = ConversionSummary("x")
    raw = [
        (0, 1.0, 2.0),            # kept as is
        (1, -1.0, 3.0),           # clipped at 0
        (2, 8.0, 12.0),           # clipped at the duration
        (3, 11.0, 15.0),          # outside (starts after the end)
        (4, -5.0, 0.0),           # outside (ends at 0)
        (5, 6.0, 4.0),            # start after end -> dropped
        (6, 3.0, 3.0),            # zero length
        (7, math.nan, 3.0),       # non-finite
    ]
    out = _common.clean_segments(raw, 10.0, "drop", summary)
    assert out.tolist() == [[0, 1, 2], [1, 0, 3], [2, 8, 10]]
    assert (summary.segments_kept, summary.segments_clipped, summary.segments_swapped) == (3, 2, 0)
    assert summary.segments_dropped == Counter(
        {"outside the video": 2, "start after end": 1, "zero length": 1, "non-finite time": 1}
    )
    swapped = ConversionSummary("x")
    out = _common.clean_segments([(5, 6.0, 4.0), (5, 12.0, 9.0)], 10.0, "swap", swapped)
    assert out.tolist() == [[5, 4, 6], [5, 9, 10]]
    assert (swapped.segments_swapped, swapped.segments_clipped, swapped.segments_dropped) == (2, 1, Counter())


def test_resample_nearest_takes_the_row_whose_window_holds_the_step():
    src = np.arange(5, dtype=np.float32)[:, None]
    assert _common.resample_nearest(src, 3)[:, 0].tolist() == [0, 1, 3]   # floor(i*5/3)
    assert _common.resample_nearest(src, 8)[:, 0].tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    assert _common.resample_nearest(src, 5)[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_class_list_parser_accepts_release_forms_and_names_bad_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("c001 Second thing\nc000 First thing\n\n")
    assert read_class_names(path) == ["First thing", "Second thing"]
    path.write_text("1\tEnter room\n2\tWalk\n")
    assert read_class_names(path, expected=2) == ["Enter room", "Walk"]
    path.write_text("Alpha\nBeta\n")
    assert read_class_names(path) == ["Alpha", "Beta"]
    path.write_text("0 a\n2 c\n")
    with pytest.raises(ConversionError, match=r"classes\.txt:2: class ids must be contiguous"):
        read_class_names(path)
    path.write_text("0 a\n1 b\n")
    with pytest.raises(ConversionError, match="expected 3 classes, found 2"):
        read_class_names(path, expected=3)


# ------------------------------------------------------------------------ Charades

def _charades_messy_plan() -> tuple[list[FixtureVideo], list[FixtureVideo]]:
    clean = charades_plan(videos=3, seed=1)
    messy = [
        FixtureVideo("EMPT1", "training", 12.00, []),
        FixtureVideo("CLIP1", "testing", 20.00, [(5, 15.00, 25.00), (6, 21.00, 30.00), (7, 8.00, 3.00)]),
        FixtureVideo("BOUND", "training", 8.00, [(3, 2.00, 5.00)], steps=8),
        FixtureVideo("NOFLW", "training", 15.00, [(1, 1.00, 2.00)], missing={"flow"}),
        FixtureVideo("NANRG", "testing", 15.00, [], nan_in={"rgb"}),
        FixtureVideo("TRUNC", "training", 15.00, [(2, 1.00, 14.00)], length_delta={"flow": -2}),
        FixtureVideo("FARMM", "training", 15.00, [], length_delta={"flow": 3}),
    ]
    return clean, messy


def test_charades_messy_release_is_cleaned_as_documented(tmp_path):
    clean, messy = _charades_messy_plan()
    raw = write_charades_raw(tmp_path / "raw", clean + messy, feature_dim=8)
    summary = charades.convert(raw, tmp_path / "charades.h5")
    f = checked(tmp_path / "charades.h5")

    written = {v.video_id for v in clean} | {"EMPT1", "CLIP1", "BOUND", "TRUNC"}
    assert set(f.video_ids) == written
    assert f.classes[0] == "Invented action number 0" and f.num_classes == 157
    assert f.modalities == ["rgb", "flow"]
    plan = {v.video_id: v for v in clean + messy}
    for vid in written:
        assert f.subsets[vid] == plan[vid].subset
        assert f.durations[vid] == pytest.approx(plan[vid].duration)
    for video in clean:  # well-formed actions come through unchanged, in release order
        assert segs(f, video.video_id) == [[c, s, e] for c, s, e in video.actions]
        assert f.lengths[video.video_id] == charades_steps(video.duration)
    assert segs(f, "EMPT1") == []
    assert f.read("EMPT1", ["labels"])["labels"].sum() == 0
    assert segs(f, "CLIP1") == [[5, 15.0, 20.0]]
    # strict rule: steps at t = 0..7 s, segment (2 s, 5 s) covers only t = 3 and 4
    labels = f.read("BOUND", ["labels"])["labels"]
    assert labels[:, 3].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert labels.sum() == 2
    # flow two steps short: both modalities truncated to the shortest
    steps = charades_steps(15.0) - 2
    rgb_src = np.load(raw / "rgb" / "TRUNC.npy")
    assert rgb_src.shape == (steps + 2, 1, 1, 8)
    np.testing.assert_array_equal(feats(f, "TRUNC", "rgb"), rgb_src[:steps, 0, 0].astype(np.float16))
    np.testing.assert_array_equal(feats(f, "TRUNC", "flow"), np.load(raw / "flow" / "TRUNC.npy").astype(np.float16))
    assert feats(f, "TRUNC", "rgb").dtype == np.float16

    assert summary.videos_written == len(written)
    assert summary.per_subset == Counter(v.subset for v in clean + messy if v.video_id in written)
    assert summary.skipped == Counter({
        "missing flow features": 1,
        "non-finite values (NaN/inf) in rgb features": 1,
        "modality lengths differ by more than 2 steps": 1,
    })
    assert summary.skipped_examples["missing flow features"] == ["NOFLW"]
    assert summary.truncated_videos == 1
    assert summary.segments_clipped == 1
    assert summary.segments_dropped == Counter({"outside the video": 1, "start after end": 1})
    # BOUND has 8 steps where 8 s at stride 8 / 24 fps implies 23: kept, but noted
    assert list(summary.note_examples.values()) == [["BOUND"]] and sum(summary.notes.values()) == 1
    assert summary.segments_kept == sum(len(v.actions) for v in clean) + 3
    text = summary.format()
    assert "skipped 3 videos" in text and "missing flow features: 1 (e.g. NOFLW)" in text
    assert "1 dropped (start after end)" in text


def test_charades_options_swap_float32_and_length_tolerance(tmp_path):
    _, messy = _charades_messy_plan()
    raw = write_charades_raw(tmp_path / "raw", messy, feature_dim=8)
    summary = charades.convert(
        raw, tmp_path / "c.h5", reversed_segments="swap", dtype="float32", max_length_mismatch=3, modalities="rgb,flow"
    )
    f = checked(tmp_path / "c.h5")
    assert segs(f, "CLIP1") == [[5, 15.0, 20.0], [7, 3.0, 8.0]]
    assert summary.segments_swapped == 1
    assert "FARMM" in f.video_ids and f.lengths["FARMM"] == charades_steps(15.0)  # within 3: truncated
    assert feats(f, "EMPT1", "rgb").dtype == np.float32
    rgb_only = charades.convert(raw, tmp_path / "rgb.h5", modalities="rgb")
    assert FeatureFile(tmp_path / "rgb.h5").modalities == ["rgb"]
    assert "NOFLW" in FeatureFile(tmp_path / "rgb.h5").video_ids and rgb_only.skipped["missing flow features"] == 0


def _append_row(path: Path, row: list[str]) -> int:
    """Append a CSV row; returns the (physical) line number where it starts."""
    line = len(path.read_text().splitlines()) + 1
    with path.open("a", newline="") as handle:
        csv.writer(handle).writerow(row)
    return line


def _row(vid: str, actions: str, length: str = "12.00", fields: int = 11) -> list[str]:
    # the description spans two physical lines: errors must name the row's first line
    row = [vid, "S9", "Garage", "5", "6", "Yes", "A script, with commas", "box", "Desc, also\nmore", actions, length]
    return row[:fields]


@pytest.mark.parametrize(
    "row, fragment",
    [
        (_row("BADA1", "c012 1.00"), "field 'actions': item 'c012 1.00' is not 'cNNN start end'"),
        (_row("BADA2", "c012 1.00 x.5"), "field 'actions'"),
        (_row("BADA3", "c157 1.00 2.00"), "class c157 not in the class list"),
        (_row("BADA4", "", length="long"), "field 'length' must be seconds"),
        (_row("BADA5", "", fields=10), "expected 11 fields, got 10"),
    ],
)
def test_charades_malformed_row_names_file_line_and_field(tmp_path, row, fragment):
    raw = make_charades_raw(tmp_path / "raw", videos=4, feature_dim=4)
    line = _append_row(raw / "Charades_v1_test.csv", row)
    with pytest.raises(ConversionError) as err:
        charades.convert(raw, tmp_path / "c.h5")
    assert f"Charades_v1_test.csv:{line}:" in str(err.value)
    assert fragment in str(err.value)
    assert not (tmp_path / "c.h5").exists()


def test_charades_cli_wrong_header_exits_nonzero_naming_file_and_line(tmp_path, capsys):
    raw = make_charades_raw(tmp_path / "raw", videos=3, feature_dim=4)
    path = raw / "Charades_v1_train.csv"
    text = path.read_text()
    path.write_text(text.replace(",length", ",duration", 1))
    with pytest.raises(SystemExit) as err:
        charades.main(["--raw", str(raw), "--out", str(tmp_path / "c.h5")])
    message = str(err.value.code)
    assert err.value.code != 0
    assert "Charades_v1_train.csv:1: wrong CSV header" in message and ",".join(CHARADES_COLUMNS) in message
    assert not (tmp_path / "c.h5").exists()


def test_charades_json_annotations_without_class_list(tmp_path):
    raw = make_charades_raw(tmp_path / "raw", videos=3, feature_dim=4)
    (raw / "Charades_v1_classes.txt").unlink()
    vids = sorted(p.stem for p in (raw / "rgb").glob("*.npy"))
    ann = {
        vids[0]: {"subset": "training", "duration": 20.5, "actions": [[0, 1.5, 3.25], [156, 19.0, 22.0]]},
        vids[1]: {"subset": "testing", "duration": 11.0, "actions": []},
    }
    (tmp_path / "charades.json").write_text(json.dumps(ann))
    summary = charades.convert(raw, tmp_path / "c.h5", annotations=tmp_path / "charades.json")
    f = checked(tmp_path / "c.h5")
    assert f.classes[:2] == ["c000", "c001"] and f.num_classes == 157
    assert set(f.video_ids) == {vids[0], vids[1]}
    assert f.subsets == {vids[0]: "training", vids[1]: "testing"}
    assert f.durations[vids[0]] == 20.5
    assert segs(f, vids[0]) == [[0, 1.5, 3.25], [156, 19.0, 20.5]]
    assert summary.segments_clipped == 1
    ann[vids[1]]["actions"] = [[157, 1.0, 2.0]]
    (tmp_path / "charades.json").write_text(json.dumps(ann))
    with pytest.raises(ConversionError, match=rf"charades\.json: video '{vids[1]}': field 'actions'\[0\]: class 157"):
        charades.convert(raw, tmp_path / "c2.h5", annotations=tmp_path / "charades.json")


def test_interrupted_conversion_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    raw = make_charades_raw(tmp_path / "raw", videos=5, feature_dim=4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "charades.h5"
    out.write_bytes(b"previous good file")
    calls = {"n": 0}
    real = charades.load_npy

    def failing(path, modality, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk died mid-way")
        return real(path, modality, **kw)

    monkeypatch.setattr(charades, "load_npy", failing)
    with pytest.raises(RuntimeError, match="disk died"):
        charades.convert(raw, out)
    assert calls["n"] == 5
    assert out.read_bytes() == b"previous good file"
    assert [p.name for p in out_dir.iterdir()] == ["charades.h5"]  # no temp file left behind


def test_nothing_usable_fails_and_writes_nothing(tmp_path):
    raw = make_charades_raw(tmp_path / "raw", videos=3, feature_dim=4)
    for p in (raw / "flow").glob("*.npy"):
        p.unlink()
    with pytest.raises(ConversionError, match=r"no usable video remains(.|\n)*missing flow features: 3"):
        charades.convert(raw, tmp_path / "c.h5")
    assert list(tmp_path.glob("c.h5*")) == [] and list(tmp_path.glob(".c.h5*")) == []


def test_charades_cli_module_entry_point(tmp_path):
    raw = make_charades_raw(tmp_path / "raw", videos=6, feature_dim=4)
    out = tmp_path / "data" / "charades.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.charades", "--raw", str(raw), "--out", str(out), "--dtype", "float32"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"charades: wrote 6 videos to {out}" in proc.stdout
    f = checked(out)
    assert len(f.video_ids) == 6 and f.attrs["dataset"] == "charades"
    assert feats(f, f.video_ids[0], "rgb").dtype == np.float32


# ----------------------------------------------------------------------------- TSU

def test_tsu_frames_to_seconds_pose_resampling_and_cleaning(tmp_path):
    clean = tsu_plan(videos=3, seed=2)
    messy = [
        FixtureVideo("P90T01C01", "training", 1000, [(3, 100, 250), (7, 900, 1200), (9, 1100, 1300)]),
        FixtureVideo("P91T01C01", "testing", 1000, [], missing={"pose"}),
        FixtureVideo("P92T01C01", "training", 1000, [], nan_in={"pose"}),
        FixtureVideo("P93T01C01", "training", 1000, []),
    ]
    raw = write_tsu_raw(tmp_path / "raw", clean + messy, feature_dim=8)
    (raw / "rgb" / "P93T01C01.npy").write_bytes(b"not a numpy file")
    summary = tsu.convert(raw, tmp_path / "tsu.h5")
    f = checked(tmp_path / "tsu.h5")

    assert set(f.video_ids) == {v.video_id for v in clean} | {"P90T01C01"}
    assert f.attrs["fps"] == 25.0 and f.attrs["split"] == "CS" and f.num_classes == 51
    assert f.durations["P90T01C01"] == pytest.approx(40.0)          # 1000 frames / 25
    assert segs(f, "P90T01C01") == [[3, 4.0, 10.0], [7, 36.0, 40.0]]  # frames/25, clipped, outside dropped
    for video in clean:
        assert f.subsets[video.video_id] == video.subset
        assert f.durations[video.video_id] == pytest.approx(video.duration / 25)
        assert_segments(f, video.video_id, [[c, s / 25, e / 25] for c, s, e in video.actions])
    # rgb (62,1,1,8) squeezed; pose (125, 4) resampled to 62 steps by floor(i * 125 / 62)
    rgb_src = np.load(raw / "rgb" / "P90T01C01.npy")
    pose_src = np.load(raw / "pose" / "P90T01C01.npy")
    assert rgb_src.shape == (62, 1, 1, 8) and pose_src.shape == (125, 4)
    np.testing.assert_array_equal(feats(f, "P90T01C01", "rgb"), rgb_src[:, 0, 0].astype(np.float16))
    index = [i * 125 // 62 for i in range(62)]
    np.testing.assert_array_equal(feats(f, "P90T01C01", "pose"), pose_src[index].astype(np.float16))

    assert summary.skipped == Counter({
        "missing pose features": 1,
        "non-finite values (NaN/inf) in pose features": 1,
        "unreadable rgb feature file (not a valid .npy array)": 1,
    })
    assert summary.segments_clipped == 1 and summary.segments_dropped == Counter({"outside the video": 1})
    assert summary.truncated_videos == 0


def test_tsu_split_and_fps_options(tmp_path):
    plan = tsu_plan(videos=3, seed=5)
    raw = write_tsu_raw(tmp_path / "raw", plan, feature_dim=4)
    tsu.convert(raw, tmp_path / "cv.h5", split="CV", fps=30.0)
    f = checked(tmp_path / "cv.h5")
    flip = {"training": "testing", "testing": "training"}
    assert f.subsets == {v.video_id: flip[v.subset] for v in plan}  # the CV file's subsets
    assert f.attrs["split"] == "CV" and f.attrs["fps"] == 30.0
    video = plan[0]
    assert f.durations[video.video_id] == pytest.approx(video.duration / 30)
    assert segs(f, video.video_id)[0] == pytest.approx([video.actions[0][0], video.actions[0][1] / 30,
                                                        video.actions[0][2] / 30])


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d["P90T01C01"]["actions"].append([3, 100]), "field 'actions'[1]: expected [class, start, end]"),
        (lambda d: d["P90T01C01"]["actions"].append([51, 1, 2]), "field 'actions'[1]: class 51 outside 0..50"),
        (lambda d: d["P90T01C01"].pop("duration"), "field 'duration' missing"),
        (lambda d: d["P90T01C01"].update(subset="dev"), "field 'subset' is 'dev'"),
    ],
)
def test_tsu_malformed_json_names_file_video_and_field(tmp_path, mutate, fragment):
    raw = write_tsu_raw(tmp_path / "raw", [FixtureVideo("P90T01C01", "training", 800, [(3, 10, 20)])], feature_dim=4)
    path = raw / "smarthome_CS_51.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConversionError) as err:
        tsu.convert(raw, tmp_path / "t.h5")
    assert "smarthome_CS_51.json: video 'P90T01C01'" in str(err.value) and fragment in str(err.value)


def test_tsu_invalid_json_syntax_names_the_line(tmp_path):
    raw = make_tsu_raw(tmp_path / "raw", videos=2, feature_dim=4)
    (raw / "smarthome_CS_51.json").write_text('{\n"P01": {"subset": "training",\n "duration": 10,, }\n}')
    with pytest.raises(SystemExit) as err:
        tsu.main(["--raw", str(raw), "--out", str(tmp_path / "t.h5")])
    assert "smarthome_CS_51.json:3: invalid JSON" in str(err.value.code)


# ------------------------------------------------------------------------- PKU-MMD

def test_pku_split_file_parsing_wrapped_lists_and_release_spelling(tmp_path):
    path = tmp_path / "cross-subject.txt"
    path.write_text("Training videos: \n0002-L, 0002-M,\n 0002-R ,0003-L, \n\nValidataion videos: \n0004-L, 0004-M\n")
    assert pku_mmd.read_split(path) == {
        "0002-L": "training", "0002-M": "training", "0002-R": "training", "0003-L": "training",
        "0004-L": "testing", "0004-M": "testing",
    }
    path.write_text("Training videos:\n0002-L, 0002-M\nValidation videos:\n0002-M\n")
    with pytest.raises(ConversionError, match=r"cross-subject\.txt:4: video '0002-M' listed twice \(also line 2\)"):
        pku_mmd.read_split(path)
    path.write_text("Training videos:\n0002-L, 0002-M\n")
    with pytest.raises(ConversionError, match="Validataion videos"):
        pku_mmd.read_split(path)


def _reference_pose(skeleton: np.ndarray, steps: int) -> np.ndarray:
    """The documented pose rule, written as plain loops (independent of the converter)."""
    frames = skeleton.reshape(len(skeleton), 2, 25, 3)
    n = len(frames)
    valid = [bool(np.any(frames[f, 0] != 0)) for f in range(n)]
    sizes = [np.mean([np.linalg.norm(frames[f, 0, j] - frames[f, 0, 0]) for j in range(25)])
             for f in range(n) if valid[f]]
    size = float(np.median(sizes))
    normalised = np.zeros((n, 2, 25, 3))
    for f in range(n):
        if not valid[f]:
            continue
        for p in range(2):
            if np.any(frames[f, p] != 0):
                normalised[f, p] = (frames[f, p] - frames[f, 0, 0]) / size
    out = np.zeros((steps, 150))
    for i in range(steps):
        window = [f for f in range(n) if i * n / steps <= f < (i + 1) * n / steps]
        if not window:
            window = [math.floor(i * n / steps)]
        good = [f for f in window if valid[f]]
        if good:
            out[i] = np.mean([normalised[f].reshape(150) for f in good], axis=0)
    return out


def test_pku_labels_duration_and_pose_from_skeleton(tmp_path):
    clean = pku_plan(videos=3, seed=3)
    body = np.zeros((25, 3))
    body[1:, 0] = 2.0 * np.where(np.arange(1, 25) % 2, 1.0, -1.0)  # every joint 2 away from the spine base
    skeleton = np.zeros((10, 2, 25, 3))
    for fr in range(10):
        skeleton[fr, 0] = body + np.array([0.1 * fr, 0.0, 3.0])
        if fr < 4:
            skeleton[fr, 1] = skeleton[fr, 0] + np.array([1.0, 0.0, 0.0])
    skeleton[9, 0] = 2.0 * body + np.array([0.9, 0.0, 3.0])  # one larger body: the median ignores it
    skeleton[5, 0] = 0.0                    # person 1 not tracked: the frame is missing even if
    skeleton[5, 1] = 1.0                    # something sits in the second person's slot
    skeleton = skeleton.reshape(10, 150)
    messy = [
        FixtureVideo("0099-L", "training", 10, [(1, 2, 6), (51, 0, 20)], steps=4),
        FixtureVideo("0097-L", "testing", 3, [], steps=5),                 # more rgb steps than frames
        FixtureVideo("0099-M", "testing", 200, [(3, 1, 50)], missing={"skeleton"}),
        FixtureVideo("0099-R", "training", 200, [(3, 1, 50)], missing={"rgb"}),
        FixtureVideo("0098-L", "testing", 200, [(3, 1, 50)], missing={"label"}),
    ]
    raw = write_pku_raw(tmp_path / "raw", clean + messy, feature_dim=8, skeletons={"0099-L": skeleton})
    summary = pku_mmd.convert(raw, tmp_path / "pku.h5")
    f = checked(tmp_path / "pku.h5")

    assert set(f.video_ids) == {v.video_id for v in clean} | {"0099-L", "0097-L"}
    assert f.classes[0] == "action_01" and f.classes[50] == "action_51" and f.modalities == ["rgb", "pose"]
    assert f.durations["0099-L"] == pytest.approx(10 / 30)
    assert_segments(f, "0099-L", [[0, 2 / 30, 6 / 30], [50, 0.0, 10 / 30]])
    for video in clean:
        assert f.subsets[video.video_id] == video.subset
        assert f.durations[video.video_id] == pytest.approx(video.duration / 30)
        assert_segments(f, video.video_id, [[c - 1, s / 30, e / 30] for c, s, e in video.actions])
        assert feats(f, video.video_id, "pose").shape == (int(video.duration) // 8, 150)

    pose = feats(f, "0099-L", "pose").astype(np.float64)
    assert pose.shape == (4, 150)
    np.testing.assert_allclose(pose, _reference_pose(skeleton, 4), atol=2e-3)  # float16 storage
    size = 24 * 2.0 / 25                     # mean distance of the 25 joints to joint 0
    # windows of 10/4 frames: [0,1,2], [3,4], [5(missing),6,7], [8,9]
    np.testing.assert_allclose(pose[0].reshape(2, 25, 3)[0], body / size, atol=2e-3)
    np.testing.assert_allclose(pose[0].reshape(2, 25, 3)[1], (body + [1.0, 0, 0]) / size, atol=2e-3)
    np.testing.assert_allclose(pose[1].reshape(2, 25, 3)[1], (body + [1.0, 0, 0]) / size / 2, atol=2e-3)
    assert np.all(pose[2:].reshape(2, 2, 25, 3)[:, 1] == 0)   # second person gone: zeros
    assert np.all(pose[:, :3] == 0)                            # centred on person 1's spine base
    # T > N: windows [i*3/5, (i+1)*3/5) hold frames 0, 1, -, 2, -; empty ones take frame
    # floor(i*3/5), so the steps show frames 0, 1, 1, 2, 2
    short = np.loadtxt(raw / "Skeleton" / "0097-L.txt")
    short_pose = feats(f, "0097-L", "pose").astype(np.float64)
    np.testing.assert_allclose(short_pose, _reference_pose(short, 5), atol=2e-3)
    np.testing.assert_array_equal(short_pose[1], short_pose[2])
    np.testing.assert_array_equal(short_pose[3], short_pose[4])
    assert not np.array_equal(short_pose[0], short_pose[1]) and not np.array_equal(short_pose[2], short_pose[3])

    assert summary.skipped == Counter({
        "missing skeleton file": 1, "missing rgb features": 1, "missing label file": 1,
    })
    assert summary.segments_clipped == 1
    assert f.attrs["split"] == "cross-subject" and f.attrs["fps"] == 30.0


def test_pku_cross_view_split_swaps_subsets(tmp_path):
    plan = pku_plan(videos=3, seed=4)
    raw = write_pku_raw(tmp_path / "raw", plan, feature_dim=4)
    pku_mmd.convert(raw, tmp_path / "cv.h5", split="cross-view")
    flip = {"training": "testing", "testing": "training"}
    assert FeatureFile(tmp_path / "cv.h5").subsets == {v.video_id: flip[v.subset] for v in plan}


def test_pku_malformed_label_line_names_file_and_line(tmp_path):
    raw = make_pku_mmd_raw(tmp_path / "raw", videos=3, feature_dim=4)
    label = raw / "Label" / "0001-M.txt"
    label.write_text("3,10,40,1\n7,50,90\n")
    with pytest.raises(SystemExit) as err:
        pku_mmd.main(["--raw", str(raw), "--out", str(tmp_path / "p.h5")])
    message = str(err.value.code)
    assert err.value.code != 0
    assert f"{label}:2: expected 4 integers 'label,start_frame,end_frame,confidence', got '7,50,90'" in message
    label.write_text("52,10,40,1\n")
    with pytest.raises(ConversionError, match=r"0001-M\.txt:1: field 'label' is 52, expected 1\.\.51"):
        pku_mmd.convert(raw, tmp_path / "p.h5")
    assert not (tmp_path / "p.h5").exists()


def test_pku_skeleton_line_with_149_floats_names_file_and_line(tmp_path):
    raw = make_pku_mmd_raw(tmp_path / "raw", videos=3, feature_dim=4)
    path = raw / "Skeleton" / "0001-R.txt"
    lines = path.read_text().splitlines()
    lines[6] = " ".join(lines[6].split()[:149])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError) as err:
        pku_mmd.convert(raw, tmp_path / "p.h5")
    assert f"{path}:7: expected 150 numbers (2 persons x 25 joints x xyz), got 149" in str(err.value)
    lines[6] = " ".join(["0.5"] * 149 + ["nan?"])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match=rf"{path.name}:7: non-numeric value"):
        pku_mmd.convert(raw, tmp_path / "p.h5")
    assert not (tmp_path / "p.h5").exists() and list(tmp_path.glob(".p.h5*")) == []


# --------------------------------------------------------------------- MultiTHUMOS

def test_multithumos_one_based_classes_subsets_and_feature_checks(tmp_path):
    clean = multithumos_plan(videos=3, seed=6)
    messy = [
        FixtureVideo("video_validation_0000001", "validation", 30.0, [(1, 1.0, 2.0), (65, 29.0, 31.0)]),
        FixtureVideo("video_test_0000002", "testing", 30.0, []),
        FixtureVideo("video_test_0000003", "testing", 30.0, []),
    ]
    raw = write_multithumos_raw(tmp_path / "raw", clean + messy, feature_dim=8)
    big = np.load(raw / "rgb" / "video_test_0000002.npy")
    np.save(raw / "rgb" / "video_test_0000002.npy", big * 1e6)            # beyond float16
    np.save(raw / "flow" / "video_test_0000003.npy", np.zeros((multithumos_steps(30.0), 5), np.float32))

    summary = multithumos.convert(raw, tmp_path / "mt.h5", classes=raw / "class_list.txt")
    f = checked(tmp_path / "mt.h5")
    assert set(f.video_ids) == {v.video_id for v in clean} | {"video_validation_0000001"}
    assert f.classes[0] == "InventedClass1" and f.num_classes == 65
    assert f.subsets["video_validation_0000001"] == "training"
    assert segs(f, "video_validation_0000001") == [[0, 1.0, 2.0], [64, 29.0, 30.0]]
    for video in clean:
        assert_segments(f, video.video_id, [[c - 1, s, e] for c, s, e in video.actions])
        assert f.lengths[video.video_id] == multithumos_steps(video.duration)
    assert summary.skipped == Counter({
        "rgb features exceed the float16 range (use --dtype float32)": 1,
        "flow feature dim differs from the first video's (8)": 1,
    })
    assert summary.segments_clipped == 1

    as32 = multithumos.convert(raw, tmp_path / "mt32.h5", dtype="float32")
    assert "video_test_0000002" in FeatureFile(tmp_path / "mt32.h5").video_ids
    assert as32.skipped == Counter({"flow feature dim differs from the first video's (8)": 1})


def test_multithumos_class_base(tmp_path):
    plan = [FixtureVideo("video_test_0000009", "testing", 20.0, [(0, 1.0, 2.0), (64, 3.0, 4.0)])]
    raw = write_multithumos_raw(tmp_path / "raw", plan, feature_dim=4)
    with pytest.raises(ConversionError, match=r"multithumos\.json: video 'video_test_0000009': field "
                                              r"'actions'\[0\]: class 0 outside 1\.\.65"):
        multithumos.convert(raw, tmp_path / "mt.h5")
    multithumos.convert(raw, tmp_path / "mt.h5", class_base=0)
    f = checked(tmp_path / "mt.h5")
    assert segs(f, "video_test_0000009") == [[0, 1.0, 2.0], [64, 3.0, 4.0]]
    assert f.classes[0] == "class_01"


@pytest.mark.parametrize(
    "maker, module",
    [(make_charades_raw, charades), (make_tsu_raw, tsu), (make_pku_mmd_raw, pku_mmd),
     (make_multithumos_raw, multithumos)],
)
def test_clean_fixture_builders_convert_completely(tmp_path, maker, module):
    raw = maker(tmp_path / "raw", videos=6, feature_dim=16, seed=7)
    summary = module.convert(raw, tmp_path / "out.h5")
    f = checked(tmp_path / "out.h5")
    assert len(f.video_ids) == 6 and summary.videos_skipped == 0 and not summary.segments_dropped
    assert set(f.subsets.values()) == {"training", "testing"}
    assert summary.segments_kept > 0
    positives = sum(int(f.read(v, ["labels"])["labels"].sum()) for v in f.video_ids)
    assert positives > 0


def test_ctrl_c_during_a_conversion_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    """A converter interrupted mid-write (the first video's load raises KeyboardInterrupt):
    status 130, one stderr line naming --out, and no file or temporary left."""
    raw = make_tsu_raw(tmp_path / "raw", videos=3, feature_dim=4)
    out = tmp_path / "out" / "t.h5"

    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_common, "_check_features", interrupted_load)
    with pytest.raises(SystemExit) as exc:
        tsu.main(["--raw", str(raw), "--out", str(out)])
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == f"python -m data_prep.tsu: interrupted; {out} was not written (or kept its previous content)"
    assert list(out.parent.iterdir()) == []


def test_kd_detect_commands_turn_ctrl_c_into_one_line(capsys):
    from kd_detect.errors import user_errors

    with pytest.raises(SystemExit) as exc, user_errors("kd-detect x"):
        raise KeyboardInterrupt
    assert exc.value.code == 130 and capsys.readouterr().err == "kd-detect x: interrupted\n"
