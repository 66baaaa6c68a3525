"""``kd-detect predict --features DIR``: an RGB-only student straight on a folder of
per-video feature files gives what ``--data`` gives on the file converted from that folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from data_prep import generic
from kd_detect.apps.export import main as export_main
from kd_detect.apps.lightning import lightning_main
from kd_detect.apps.predict import main
from kd_detect.cli import main as cli_main
from kd_detect.data.feature_dir import FeatureDirError, read_durations
from kd_detect.errors import KdDetectError
from kd_detect.metrics import extract_segments
from kd_detect.modules import StudentModule, TeacherModule, instantiate
from tests.helpers import TINY_HEAD, one_line_failure

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["walk", "sit", "drink"]
DIMS = {"rgb": 6, "flow": 4}
LENGTHS = {"a": 17, "b": 5, "c": 1, "d": 12}
FPS, STRIDE = 25.0, 8.0
STEP = STRIDE / FPS  # 0.32 s


def write_folder(root: Path, lengths=LENGTHS, dims=DIMS, seed=0, modalities=("rgb",)) -> Path:
    """``root/<modality>/<vid>.npy`` (every other video as a ``.pt`` tensor) of random (T, D)."""
    rng = np.random.default_rng(seed)
    for m in modalities:
        (root / m).mkdir(parents=True, exist_ok=True)
    for k, (vid, steps) in enumerate(lengths.items()):
        for m in modalities:
            arr = rng.standard_normal((steps, dims[m])).astype(np.float32)
            if k % 2:
                torch.save(torch.from_numpy(arr), root / m / f"{vid}.pt")
            else:
                np.save(root / m / f"{vid}.npy", arr)
    return root


def save(module, path) -> str:
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


def read_predictions(path) -> tuple[list[str], dict[str, np.ndarray], dict[str, float]]:
    with h5py.File(path) as h5:
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in h5.attrs["classes"]]
        scores = {vid: h5[f"videos/{vid}/scores"][()] for vid in h5["videos"]}
        durations = {vid: float(h5[f"videos/{vid}"].attrs["duration"]) for vid in h5["videos"]}
    return classes, scores, durations


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An RGB feature folder, the unlabelled float32 file converted from it, a student
    checkpoint (teacher deleted) and its export."""
    root = tmp_path_factory.mktemp("predict_features")
    features = write_folder(root / "features")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    data = root / "new.h5"
    generic.convert(features, data, modality=["rgb"], classes=root / "classes.txt", fps=FPS, stride=STRIDE,
                    dtype="float32")
    torch.manual_seed(0)
    teacher = instantiate(TeacherModule, head=TINY_HEAD, modalities=["rgb", "flow"], num_classes=3,
                          classes=CLASSES, modality_dims=DIMS)
    teacher_ckpt = save(teacher, root / "teacher.ckpt")
    student = instantiate(StudentModule, head=TINY_HEAD, modalities=["rgb"], num_classes=3, classes=CLASSES,
                          modality_dims=DIMS, teachers={"t": teacher_ckpt},
                          distill={"boundary": {"class_path": "kd_detect.distill.BoundarySaliency"}})
    with torch.no_grad():
        student.head.classifier.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))  # varied probabilities
    ckpt = save(student, root / "student.ckpt")
    Path(teacher_ckpt).unlink()
    assert export_main(["--ckpt", ckpt, "--out", str(root / "student.pt")]) == 0
    return {"root": root, "features": features, "data": data, "ckpt": ckpt, "student": student.eval(),
            "teacher": teacher, "pt": root / "student.pt", "state": root / "student.state.pt"}


def predict_both(model, setup, tmp_path, extra=()):
    """``predict --data`` on the converted file and ``--features`` on the folder: both outputs."""
    outs = {}
    for how, source in (("data", setup["data"]), ("features", setup["features"])):
        out, segs = tmp_path / f"{how}.h5", tmp_path / f"{how}.jsonl"
        flags = ["--fps", str(FPS), "--stride", str(STRIDE)] if how == "features" else []
        assert main(["--ckpt", str(model), f"--{how}", str(source), "--out", str(out), "--segments", str(segs),
                     "--threshold", "0.6", "--batch-size", "3", *flags, *extra]) == 0
        outs[how] = (*read_predictions(out), segs.read_text())
    return outs


@pytest.mark.parametrize("model", ["ckpt", "pt", "state"])
def test_features_give_the_same_scores_and_segments_as_data(setup, tmp_path, model):
    outs = predict_both(setup[model], setup, tmp_path)
    (cls_d, sc_d, dur_d, seg_d), (cls_f, sc_f, dur_f, seg_f) = outs["data"], outs["features"]
    assert cls_d == cls_f == CLASSES and sc_d.keys() == sc_f.keys() == LENGTHS.keys()
    for vid, steps in LENGTHS.items():
        assert sc_f[vid].dtype == np.float32 and sc_f[vid].shape == (steps, 3)
        np.testing.assert_array_equal(sc_f[vid], sc_d[vid])  # bit-identical
        assert dur_f[vid] == dur_d[vid] == steps * STEP
    assert seg_f == seg_d and seg_f  # byte-identical segment files, not empty
    # and the scores are the student's, video by video (not merely the same wrong thing twice)
    for vid in LENGTHS:
        arr = np.load(p) if (p := setup["features"] / "rgb" / f"{vid}.npy").exists() else torch.load(
            setup["features"] / "rgb" / f"{vid}.pt").numpy()
        x = torch.from_numpy(arr).T[None]
        with torch.no_grad():
            logits = setup["student"]({"rgb": x, "mask": torch.ones(1, x.shape[2], dtype=torch.bool)}).logits
        np.testing.assert_allclose(sc_f[vid], torch.sigmoid(logits)[0].T.numpy(), atol=1e-5)
    rows = [json.loads(line) for line in seg_f.splitlines()]
    want = [(vid, CLASSES[c], round(s, 6), round(e, 6)) for vid in sorted(LENGTHS)
            for c, s, e, _ in extract_segments(sc_f[vid], LENGTHS[vid] * STEP, threshold=0.6)]
    assert [(r["video"], r["class"], r["start"], r["end"]) for r in rows] == want


def test_rgb_folder_or_root_step_seconds_and_durations_table(setup, tmp_path):
    base = ["--ckpt", setup["ckpt"], "--out"]
    assert cli_main(["predict", *base, str(tmp_path / "root.h5"), "--features", str(setup["features"]),
                     "--step-seconds", str(STEP)]) == 0
    assert main([*base, str(tmp_path / "rgb.h5"), "--features", str(setup["features"] / "rgb"),
                 "--fps", str(FPS), "--stride", str(STRIDE)]) == 0
    _, root_scores, root_dur = read_predictions(tmp_path / "root.h5")
    _, rgb_scores, rgb_dur = read_predictions(tmp_path / "rgb.h5")
    assert root_dur == rgb_dur == {vid: steps * STEP for vid, steps in LENGTHS.items()}
    for vid in LENGTHS:
        np.testing.assert_array_equal(root_scores[vid], rgb_scores[vid])
    # a durations table wins over the step rule; the videos it lacks fall back to T x step
    table = tmp_path / "durations.csv"
    table.write_text("video,duration,note\na,10.5,x\nc,0.25,\n")
    segs = tmp_path / "s.jsonl"
    assert main([*base, str(tmp_path / "t.h5"), "--features", str(setup["features"]), "--durations", str(table),
                 "--fps", str(FPS), "--stride", str(STRIDE), "--segments", str(segs), "--threshold", "0.6"]) == 0
    _, scores, durations = read_predictions(tmp_path / "t.h5")
    assert durations == {"a": 10.5, "b": 5 * STEP, "c": 0.25, "d": 12 * STEP}
    for vid in LENGTHS:
        np.testing.assert_array_equal(scores[vid], root_scores[vid])  # durations never change scores
    rows = [json.loads(line) for line in segs.read_text().splitlines()]
    a_rows = [(r["start"], r["end"]) for r in rows if r["video"] == "a"]
    assert a_rows and a_rows == [(round(s, 6), round(e, 6)) for c, s, e, _ in
                                 extract_segments(scores["a"], 10.5, threshold=0.6)]
    # a table covering every video needs no step
    full = tmp_path / "full.csv"
    full.write_text("video,duration\n" + "".join(f"{v},{2.0 * t}\n" for v, t in LENGTHS.items()))
    assert main([*base, str(tmp_path / "f.h5"), "--features", str(setup["features"]), "--durations", str(full)]) == 0
    assert read_predictions(tmp_path / "f.h5")[2] == {v: 2.0 * t for v, t in LENGTHS.items()}


def test_read_durations_refusals(tmp_path):
    cases = {
        "video,length\na,1\n": "header must name columns video and duration",
        "video,duration\na,abc\n": ":2: video 'a': field 'duration' is 'abc', expected a number",
        "video,duration\na,1\nb,-2\n": ":3: video 'b': field 'duration' is '-2', expected a positive",
        "video,duration\na,1\na,2\n": ":3: video 'a' appears twice",
        "video,duration\n,1\n": ":2: field 'video' is empty",
    }
    for k, (text, fragment) in enumerate(cases.items()):
        path = tmp_path / f"d{k}.csv"
        path.write_text(text)
        with pytest.raises(FeatureDirError) as exc:
            read_durations(path)
        assert str(exc.value).startswith(str(path)) and fragment in str(exc.value)
    assert issubclass(FeatureDirError, KdDetectError) and issubclass(FeatureDirError, ValueError)
    good = tmp_path / "good.csv"
    good.write_text("video,duration\r\nx,1.5\r\n\r\ny,2\r\n")
    assert read_durations(good) == {"x": 1.5, "y": 2.0}


def _fails(argv, capsys) -> str:
    return one_line_failure(main, argv, capsys, "kd-detect predict")


def test_bad_inputs_are_one_clear_line(setup, tmp_path, capsys):
    out = tmp_path / "p.h5"
    step = ["--fps", str(FPS), "--stride", str(STRIDE)]
    ckpt = ["--ckpt", setup["ckpt"], "--out", str(out)]
    err = _fails([*ckpt, "--features", str(tmp_path / "nowhere"), *step], capsys)
    assert "nowhere: rgb feature folder not found" in err
    (tmp_path / "empty").mkdir()
    err = _fails([*ckpt, "--features", str(tmp_path / "empty"), *step], capsys)
    assert "empty: no rgb feature files" in err
    wrong = write_folder(tmp_path / "wrong", dims={"rgb": 7})
    err = _fails([*ckpt, "--features", str(wrong), *step], capsys)
    assert f"{wrong / 'rgb'}: video 'a': rgb features have dim 7" in err and "expects 6" in err
    bad = write_folder(tmp_path / "nan")
    arr = np.load(bad / "rgb" / "c.npy")
    arr[0, 2] = np.nan
    np.save(bad / "rgb" / "c.npy", arr)
    err = _fails([*ckpt, "--features", str(bad), *step], capsys)
    assert "c.npy: video 'c': rgb features: non-finite values (NaN/inf) at 1 steps, first at step 0" in err
    err = _fails([*ckpt, "--features", str(setup["features"]), "--data", str(setup["data"]), *step], capsys)
    assert "exactly one of --data FILE.h5 and --features DIR" in err
    err = _fails(ckpt, capsys)
    assert "exactly one of --data FILE.h5 and --features DIR" in err
    err = _fails([*ckpt, "--features", str(setup["features"])], capsys)
    assert "needs the videos' durations" in err
    err = _fails([*ckpt, "--features", str(setup["features"]), "--fps", "25"], capsys)
    assert "--fps and --stride go together" in err
    err = _fails([*ckpt, "--features", str(setup["features"]), "--step-seconds", "0"], capsys)
    assert "--step-seconds must be a positive number" in err
    err = _fails([*ckpt, "--features", str(setup["features"]), "--subset", "testing", *step], capsys)
    assert "--subset" in err and "--features" in err
    err = _fails([*ckpt, "--data", str(setup["data"]), "--fps", "25", "--stride", "8"], capsys)
    assert "--fps goes with --features DIR" in err
    partial = tmp_path / "partial.csv"
    partial.write_text("video,duration\na,3\n")
    err = _fails([*ckpt, "--features", str(setup["features"]), "--durations", str(partial)], capsys)
    assert f"{partial}: video 'b' ({setup['features'] / 'rgb' / 'b.pt'}) has no duration (3 video(s)" in err
    teacher = save(setup["teacher"], tmp_path / "teacher.ckpt")
    err = _fails(["--ckpt", teacher, "--out", str(out), "--features", str(setup["features"]), *step], capsys)
    assert "RGB features only" in err and "'flow'" in err
    # the output never replaces an input
    err = _fails([*ckpt[:2], "--out", str(partial), "--features", str(setup["features"]), "--durations",
                  str(partial)], capsys)
    assert "refusing to write the output over the input" in err
    assert partial.read_text() == "video,duration\na,3\n"
    err = _fails([*ckpt[:2], "--out", str(out), "--segments", setup["ckpt"], "--features",
                  str(setup["features"]), *step], capsys)
    assert "refusing to write the output over the input" in err
    victim = setup["features"] / "rgb" / "a.npy"  # a feature file of the folder is an input too
    before = victim.read_bytes()
    err = _fails([*ckpt[:2], "--out", str(victim), "--features", str(setup["features"]), *step], capsys)
    assert f"{victim}: refusing to write the output over the input" in err
    assert victim.read_bytes() == before
    assert not out.exists() and not list(tmp_path.glob(".p.h5.*"))


# ------------------------------------------------------------------------ end to end
SHORT = [
    "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--trainer.logger=false", "--model.init_args.head.init_args.hidden=16",
    "--model.init_args.head.init_args.num_layers=2", "--data.batch_size=4",
]


def test_own_data_end_to_end_to_predict_features(tmp_path, capsys):
    """README "Train on your own data": features + CSV -> generic converter -> check ->
    teacher -> student -> export -> ``predict --features`` on new videos == ``--data``."""
    os.environ["WANDB_MODE"] = "disabled"
    train = write_folder(tmp_path / "features", lengths={f"v{i}": 24 + i for i in range(8)},
                         modalities=("rgb", "flow"))
    rows = ["video,label,start,end,subset"] + [
        f"v{i},{CLASSES[i % 3]},{0.5 + 0.1 * i:.2f},{4.0 + 0.2 * i:.2f},{'training' if i < 6 else 'testing'}"
        for i in range(8)
    ]
    (tmp_path / "annotations.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    data = tmp_path / "data" / "generic.h5"
    assert generic.main(["--raw", str(train), "--annotations", str(tmp_path / "annotations.csv"), "--classes",
                         str(tmp_path / "classes.txt"), "--fps", str(FPS), "--stride", str(STRIDE),
                         "--out", str(data)]) == 0
    assert cli_main(["check", str(data)]) == 0
    teacher, student = tmp_path / "runs" / "teacher", tmp_path / "runs" / "student"
    lightning_main(["fit", "--config", str(ROOT / "experiments/charades_teacher.yaml"), f"--data.path={data}",
                    *SHORT, f"--trainer.default_root_dir={teacher}"])
    lightning_main(["fit", "--config", str(ROOT / "experiments/charades_kd.yaml"), f"--data.path={data}", *SHORT,
                    f"--trainer.default_root_dir={student}",
                    f"--model.init_args.teachers.flow={teacher / 'best.ckpt'}"])
    pt = tmp_path / "student.pt"
    assert cli_main(["export", "--ckpt", str(student / "best.ckpt"), "--out", str(pt)]) == 0
    new = write_folder(tmp_path / "new_features", lengths={"n1": 9, "n2": 30, "n3": 2}, seed=7)
    new_file = tmp_path / "data" / "new.h5"
    assert generic.main(["--modality", f"rgb={new / 'rgb'}", "--classes", str(tmp_path / "classes.txt"),
                         "--fps", str(FPS), "--stride", str(STRIDE), "--dtype", "float32",
                         "--out", str(new_file)]) == 0
    capsys.readouterr()
    outs = {}
    for how, source, flags in (("data", new_file, []), ("features", new, ["--fps", str(FPS), "--stride",
                                                                           str(STRIDE)])):
        out, segs = tmp_path / f"{how}.h5", tmp_path / f"{how}.jsonl"
        assert cli_main(["predict", "--ckpt", str(pt), f"--{how}", str(source), "--out", str(out),
                         "--segments", str(segs), "--threshold", "0.3", *flags]) == 0
        outs[how] = (*read_predictions(out), segs.read_text())
    assert "wrote per-step scores of 3 videos" in capsys.readouterr().out
    (cls_d, sc_d, dur_d, seg_d), (cls_f, sc_f, dur_f, seg_f) = outs["data"], outs["features"]
    assert cls_d == cls_f == CLASSES and sorted(sc_f) == ["n1", "n2", "n3"] and dur_f == dur_d
    for vid in sc_d:
        assert sc_f[vid].shape == sc_d[vid].shape and np.isfinite(sc_f[vid]).all()
        np.testing.assert_array_equal(sc_f[vid], sc_d[vid])
    assert seg_f == seg_d

