"""``python -m data_prep.add_unlabelled``: a labelled file plus other files' videos as subset
``unlabelled``. Checked against the generator, which writes the same videos without their
annotations itself, and on every refusal the module docstring lists."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_prep.add_unlabelled import SOURCES_ATTR, add_unlabelled, main
from kd_detect.data.format import UNLABELLED, FeatureFile, FeatureFileWriter, VideoRecord
from kd_detect.data.validate import validate_file

EXTRA = 5


@pytest.fixture(scope="module")
def files(make_synthetic_h5, tmp_path_factory):
    """(base, the generator's base + EXTRA unlabelled videos, a file of those EXTRA videos
    alone with their labels, as a second extraction would give them)."""
    base = make_synthetic_h5()
    ceiling = FeatureFile(make_synthetic_h5(extra_training=EXTRA))
    extra_ids = [v for v in ceiling.video_ids if v not in FeatureFile(base).video_ids]
    extra = tmp_path_factory.mktemp("extra") / "extra.h5"
    with FeatureFileWriter(extra, ceiling.classes, ceiling.modalities) as writer:
        for vid in extra_ids:
            writer.add(ceiling.record(vid))
    return base, make_synthetic_h5(extra_training=EXTRA, extra_subset=UNLABELLED), extra


def _video(h5: h5py.File, vid: str) -> dict:
    g = h5["videos"][vid]
    return {"subset": g.attrs["subset"], "duration": g.attrs["duration"],
            **{name: g[name][()] for name in g}}


def test_the_same_videos_as_the_generator_writes_without_labels(files, tmp_path):
    base, generated, extra = files
    out = tmp_path / "plus.h5"
    summary = add_unlabelled(base, [extra], out)
    with h5py.File(out, "r") as mine, h5py.File(generated, "r") as theirs:
        assert list(mine["videos"]) == list(theirs["videos"])
        for vid in theirs["videos"]:
            a, b = _video(mine, vid), _video(theirs, vid)
            assert a.keys() == b.keys(), vid  # the extra videos have no labels or segments
            for key in a:
                assert np.array_equal(a[key], b[key]), (vid, key)
            assert mine["videos"][vid]["rgb"].dtype == theirs["videos"][vid]["rgb"].dtype
        assert json.loads(mine.attrs[SOURCES_ATTR]) == [{"file": str(extra), "videos": EXTRA, "prefix": ""}]
        assert list(mine.attrs["classes"]) == list(theirs.attrs["classes"])
    report = validate_file(out)
    assert report.ok, report.problems
    ff = FeatureFile(out)
    assert ff.videos_in(UNLABELLED) == FeatureFile(extra).video_ids
    assert summary.videos_written == len(ff.video_ids) and summary.per_subset[UNLABELLED] == EXTRA
    # the extra file's labels were left out, and the summary says so
    assert sum(summary.notes.values()) == EXTRA and "not copied" in summary.format()


def test_an_unlabelled_file_as_extra_and_a_prefix(files, tmp_path):
    """The generic converter's file without annotations (root attr labelled = 0) is the usual
    extra file; a prefix tells its ids apart from the base's, even the same ones."""
    base, _, _ = files
    b = FeatureFile(base)
    feats = {m: b.read(b.video_ids[0], [m])[m] for m in b.modalities}
    feats["depth"] = np.ones((len(feats["rgb"]), 3), np.float16)  # a modality the base lacks: dropped
    unl = tmp_path / "unl.h5"
    with FeatureFileWriter(unl, b.classes, [*b.modalities, "depth"], labelled=False) as writer:
        writer.add(VideoRecord(b.video_ids[0], UNLABELLED, 7.5, feats, attrs={"fps": 24.0}))
    out = tmp_path / "plus.h5"
    summary = add_unlabelled(base, [unl], out, prefix="x_")
    ff = FeatureFile(out)
    new = "x_" + b.video_ids[0]
    assert ff.videos_in(UNLABELLED) == [new] and ff.modalities == b.modalities
    record = ff.record(new)
    assert record.labels is None and record.duration == 7.5 and record.attrs == {"fps": 24.0}
    assert np.array_equal(record.features["rgb"], feats["rgb"])
    assert "modalities ['depth']" in summary.format()


def _file(path: Path, modalities: dict[str, int], ids=("a",), labelled=True) -> Path:
    with FeatureFileWriter(path, ["c0"], list(modalities), labelled=labelled) as writer:
        for vid in ids:
            feats = {m: np.zeros((4, d), np.float16) for m, d in modalities.items()}
            writer.add(VideoRecord(vid, "training" if labelled else UNLABELLED, 2.0, feats))
    return path


def test_refusals_name_the_file_video_and_field_and_write_nothing(files, tmp_path, capsys):
    base, _, extra = files
    dims = FeatureFile(base).modality_dims
    no_pose = _file(tmp_path / "no_pose.h5", {"rgb": dims["rgb"], "flow": dims["flow"]})
    wide = _file(tmp_path / "wide.h5", {**dims, "flow": dims["flow"] + 1})
    clash = _file(tmp_path / "clash.h5", dims, ids=(FeatureFile(base).video_ids[3],))
    unlabelled_base = _file(tmp_path / "ub.h5", dims, labelled=False)
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("not a feature file")
    out = tmp_path / "out.h5"
    cases = [
        ((base, [no_pose], out), rf"{no_pose}: modality 'pose' missing: the base {base} has"),
        ((base, [wide], out), rf"{wide}: modality 'flow' has feature dim {dims['flow'] + 1}, the base .* has {dims['flow']}"),
        ((base, [clash], out), rf"{clash}: video '{FeatureFile(base).video_ids[3]}': id .* is already in {base}; "
                               "give --prefix"),
        ((base, [extra, extra], out), rf"{extra}: video .* is already in {extra}"),
        ((unlabelled_base, [extra], out), rf"{unlabelled_base}: an unlabelled file .* cannot be the base"),
        ((base, [extra], extra), "refusing to write the output over the input"),
        ((base, [extra], out, "a/"), "--prefix 'a/': video ids may not contain '/'"),
        ((base, [not_h5], out), rf"{not_h5}: not a readable HDF5 feature file"),
    ]
    before = extra.read_bytes()
    for args, message in cases:
        with pytest.raises(Exception, match=message):
            add_unlabelled(*args)
        assert not out.exists()
    assert extra.read_bytes() == before
    # the command: one line, status 1
    with pytest.raises(SystemExit) as stop:
        main(["--base", str(base), "--extra", str(no_pose), "--out", str(out)])
    assert str(stop.value).startswith("data_prep.add_unlabelled: error: ") and "\n" not in str(stop.value)
    assert not out.exists()
    assert main(["--base", str(base), "--extra", str(extra), "--out", str(out)]) == 0
    assert f"wrote {len(FeatureFile(out).video_ids)} videos to {out}" in capsys.readouterr().out


def test_record_reads_videos_without_labels_and_their_attrs(files):
    _, generated, _ = files
    ff = FeatureFile(generated)
    vid = ff.videos_in(UNLABELLED)[0]
    record = ff.record(vid)
    assert record.labels is None and record.segments.shape == (0, 3) and record.subset == UNLABELLED
    labelled = ff.record(ff.videos_in("training")[0])
    assert labelled.labels.shape == (labelled.num_steps, ff.num_classes)
