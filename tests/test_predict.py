"""``kd-detect predict``: prediction files from checkpoints and exports on label-free RGB files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from kd_detect.apps.export import main as export_main
from kd_detect.apps.predict import main
from kd_detect.cli import main as cli_main
from kd_detect.data.format import VideoRecord, write_feature_file
from kd_detect.metrics import extract_segments
from kd_detect.modules import StudentModule, TeacherModule, instantiate
from tests.helpers import one_line_failure

CLASSES = ["open door", "sit down", "drink"]
DIMS = {"rgb": 10, "flow": 4}
HEAD = {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 16, "num_layers": 2}}
LENGTHS = {"a": 17, "b": 5, "c": 1, "d": 12}


def write_data(path, dims=DIMS, lengths=LENGTHS, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    videos = [
        VideoRecord(vid, "testing" if vid != "d" else "training", 2.0 * T,
                    {m: rng.standard_normal((T, d)).astype(np.float32) for m, d in dims.items()})
        for vid, T in lengths.items()
    ]
    write_feature_file(path, CLASSES, list(dims), videos, dtype="float32")
    if not labels:  # a deployment file: no labels at all
        with h5py.File(path, "a") as h5:
            for vid in lengths:
                del h5[f"videos/{vid}/labels"], h5[f"videos/{vid}/segments"]
    return path


def save(module, path) -> str:
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A student checkpoint whose teacher checkpoint is deleted afterwards, and an RGB-only,
    label-free feature file."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    teacher = instantiate(TeacherModule, head=HEAD, modalities=["rgb", "flow"], num_classes=3, classes=CLASSES,
                          modality_dims=DIMS)
    teacher_ckpt = root / "teacher.ckpt"
    save(teacher, teacher_ckpt)
    student = instantiate(
        StudentModule, head=HEAD, modalities=["rgb"], num_classes=3, classes=CLASSES, modality_dims=DIMS,
        teachers={"t": str(teacher_ckpt)},
        distill={"boundary": {"class_path": "kd_detect.distill.BoundarySaliency"}},
    )
    with torch.no_grad():
        student.head.classifier.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))  # varied probabilities
    ckpt = save(student, root / "student.ckpt")
    teacher_ckpt.unlink()  # predicting must not need the teacher
    rgb_file = write_data(root / "rgb_only.h5", dims={"rgb": DIMS["rgb"]}, labels=False)
    return {"root": root, "ckpt": ckpt, "student": student.eval(), "rgb_file": rgb_file, "teacher": teacher}


def expected_scores(module, rgb_file) -> dict[str, np.ndarray]:
    """Each video alone through the module: sigmoid(logits) as (T, C)."""
    out = {}
    with h5py.File(rgb_file) as h5:
        for vid in h5["videos"]:
            x = torch.from_numpy(h5[f"videos/{vid}/rgb"][()]).T[None]
            with torch.no_grad():
                logits = module({"rgb": x, "mask": torch.ones(1, x.shape[2], dtype=torch.bool)}).logits
            out[vid] = torch.sigmoid(logits)[0].T.numpy()
    return out


def read_predictions(path) -> tuple[list[str], dict[str, np.ndarray]]:
    with h5py.File(path) as h5:
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in h5.attrs["classes"]]
        return classes, {vid: h5[f"videos/{vid}/scores"][()] for vid in h5["videos"]}


def test_student_checkpoint_predicts_label_free_rgb_file(setup, tmp_path, capsys):
    out, segs = tmp_path / "preds.h5", tmp_path / "segs.jsonl"
    argv = ["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--out", str(out),
            "--segments", str(segs), "--threshold", "0.6", "--batch-size", "3"]
    assert main(argv) == 0
    assert "4 videos" in capsys.readouterr().out
    classes, scores = read_predictions(out)
    assert classes == CLASSES
    expected = expected_scores(setup["student"], setup["rgb_file"])
    assert scores.keys() == expected.keys() == LENGTHS.keys()  # all subsets by default
    for vid, T in LENGTHS.items():
        assert scores[vid].dtype == np.float32 and scores[vid].shape == (T, 3)
        np.testing.assert_allclose(scores[vid], expected[vid], atol=1e-5)
    rows = [json.loads(line) for line in segs.read_text().splitlines()]
    want = [
        {"video": vid, "class": CLASSES[c], "start": s, "end": e, "score": sc}
        for vid in sorted(LENGTHS)
        for c, s, e, sc in extract_segments(scores[vid], 2.0 * LENGTHS[vid], threshold=0.6)
    ]
    assert rows and len(rows) == len(want)
    for got, ref in zip(rows, want):
        assert got.keys() == ref.keys() and got["video"] == ref["video"] and got["class"] == ref["class"]
        assert got["start"] == pytest.approx(ref["start"]) and got["end"] == pytest.approx(ref["end"])
        assert got["score"] == pytest.approx(ref["score"], abs=1e-6) and got["score"] >= 0.6
    assert {r["class"] for r in rows} <= set(CLASSES) and "open door" in {r["class"] for r in rows}


def test_subset_and_cli_dispatch(setup, tmp_path):
    out = tmp_path / "p.h5"
    data = write_data(tmp_path / "labelled.h5")  # rgb + flow + labels: extra content is fine
    assert cli_main(["predict", "--ckpt", setup["ckpt"], "--data", str(data), "--out", str(out),
                     "--subset", "testing"]) == 0
    _, scores = read_predictions(out)
    assert sorted(scores) == ["a", "b", "c"]


def test_exported_model_gives_the_same_predictions(setup, tmp_path):
    pt = tmp_path / "student.pt"
    assert export_main(["--ckpt", setup["ckpt"], "--out", str(pt)]) == 0
    ref_out = tmp_path / "ref.h5"
    main(["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--out", str(ref_out)])
    _, ref = read_predictions(ref_out)
    for model_file in (pt, tmp_path / "student.state.pt"):
        out = tmp_path / f"{model_file.name}.h5"
        assert main(["--ckpt", str(model_file), "--data", str(setup["rgb_file"]), "--out", str(out),
                     "--batch-size", "2"]) == 0
        classes, scores = read_predictions(out)
        assert classes == CLASSES and scores.keys() == ref.keys()
        for vid in ref:
            np.testing.assert_allclose(scores[vid], ref[vid], atol=1e-5)


def _fails(argv, capsys) -> str:
    return one_line_failure(main, argv, capsys, "kd-detect predict")


def test_bad_inputs_are_one_clear_line(setup, tmp_path, capsys):
    out = tmp_path / "p.h5"
    base = ["--out", str(out)]
    wrong_dim = write_data(tmp_path / "wrong_dim.h5", dims={"rgb": 7}, labels=False)
    err = _fails(["--ckpt", setup["ckpt"], "--data", str(wrong_dim)] + base, capsys)
    assert "wrong_dim.h5" in err and "'rgb'" in err and "dim 7" in err and "expects 10" in err
    empty = write_data(tmp_path / "empty.h5", lengths={})
    err = _fails(["--ckpt", setup["ckpt"], "--data", str(empty)] + base, capsys)
    assert "empty.h5" in err and "no videos" in err
    err = _fails(["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--subset", "validation"] + base, capsys)
    assert "selects no video" in err and "'validation'" in err
    err = _fails(["--ckpt", str(tmp_path / "missing.ckpt"), "--data", str(setup["rgb_file"])] + base, capsys)
    assert "missing.ckpt: checkpoint not found" in err
    err = _fails(["--ckpt", setup["ckpt"], "--data", str(tmp_path / "nothere.h5")] + base, capsys)
    assert "nothere.h5" in err
    # a two-stream teacher on an RGB-only file: the missing modality is named
    teacher_ckpt = save(setup["teacher"], tmp_path / "teacher.ckpt")
    err = _fails(["--ckpt", teacher_ckpt, "--data", str(setup["rgb_file"])] + base, capsys)
    assert "rgb_only.h5" in err and "'flow'" in err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = _fails(["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--out", str(blocker / "p.h5")], capsys)
    assert "a_file/p.h5: cannot write here" in err
    assert not out.exists()  # nothing half-written under the final name
    assert not list(tmp_path.glob(".p.h5.*"))


def test_threshold_auto_reads_the_cut_chosen_on_validation_from_the_checkpoint_and_its_exports(setup, tmp_path, capsys):
    """A model whose validation chose 0.6 (``event_threshold: auto``): ``--threshold auto``
    writes the segments ``--threshold 0.6`` writes, from the checkpoint and from both export
    files; a model without a choice is refused in one line naming it."""
    from kd_detect.modules.detector import EVENT_THRESHOLD

    ckpt = torch.load(setup["ckpt"], map_location="cpu", weights_only=False)
    ckpt[EVENT_THRESHOLD] = 0.6  # what a validation epoch under event_threshold: auto records
    chosen = str(tmp_path / "chosen.ckpt")
    torch.save(ckpt, chosen)
    ref = tmp_path / "ref.jsonl"
    assert main(["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--out", str(tmp_path / "r.h5"),
                 "--segments", str(ref), "--threshold", "0.6"]) == 0
    half = tmp_path / "half.jsonl"
    assert main(["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--out", str(tmp_path / "h.h5"),
                 "--segments", str(half)]) == 0
    want = ref.read_text()
    assert want and want != half.read_text()  # 0.5 gives other segments: the test can tell the cuts apart
    pt = tmp_path / "student.pt"
    assert export_main(["--ckpt", chosen, "--out", str(pt)]) == 0
    for i, model_file in enumerate((chosen, str(pt), str(tmp_path / "student.state.pt"))):
        segs = tmp_path / f"auto{i}.jsonl"
        assert main(["--ckpt", model_file, "--data", str(setup["rgb_file"]), "--out", str(tmp_path / f"a{i}.h5"),
                     "--segments", str(segs), "--threshold", "auto"]) == 0
        assert segs.read_text() == want, model_file
    capsys.readouterr()
    err = _fails(["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--out", str(tmp_path / "n.h5"),
                  "--segments", str(tmp_path / "n.jsonl"), "--threshold", "auto"], capsys)
    assert "student.ckpt: --threshold auto uses the segment threshold chosen on validation" in err
    assert not (tmp_path / "n.h5").exists()
    with pytest.raises(SystemExit):
        main(["--ckpt", setup["ckpt"], "--data", str(setup["rgb_file"]), "--out", str(tmp_path / "x.h5"),
              "--threshold", "best"])
    assert "must be a probability in [0, 1] or 'auto', got 'best'" in capsys.readouterr().err
