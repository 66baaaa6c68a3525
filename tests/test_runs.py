"""RunDir (the runs/<EXP>/ layout) and the TeacherMetrics callback that reads it."""

from __future__ import annotations

import json
import types

import pytest

from kd_detect.callbacks.teachers import TeacherMetrics, teacher_figures
from kd_detect.errors import UsageError
from kd_detect.runs import RunDir


def test_checkpoint_config_metrics_and_siblings(tmp_path):
    runs = tmp_path / "runs"
    kd, rgb = runs / "pku_mmd_kd", runs / "pku_mmd_rgb"
    with pytest.raises(UsageError, match="run directory not found"):
        RunDir(kd).checkpoint()
    kd.mkdir(parents=True)
    rgb.mkdir()
    with pytest.raises(UsageError, match="no best.ckpt or last.ckpt"):
        RunDir(kd).checkpoint()
    (kd / "last.ckpt").write_bytes(b"x")
    assert RunDir(kd).checkpoint() == kd / "last.ckpt"
    (kd / "best.ckpt").write_bytes(b"x")
    assert RunDir(kd).checkpoint() == kd / "best.ckpt"  # best wins over last
    assert RunDir(kd).config() == {} and RunDir(kd).metrics() is None and RunDir(kd).data_path() is None
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.h5").write_bytes(b"")
    (kd / "config.yaml").write_text("data:\n  path: data/f.h5\n")
    assert RunDir(kd).data_path() == tmp_path / "data" / "f.h5"  # relative to the folder holding runs/
    (kd / "metrics.json").write_text(json.dumps({"test/frame_map": 0.5}))
    assert RunDir(kd).metrics() == {"test/frame_map": 0.5}
    assert RunDir(kd).rgb_sibling() == RunDir(rgb)  # longest prefix: pku_mmd_rgb, not pku_rgb
    assert RunDir(rgb).rgb_sibling() is None
    assert RunDir(kd).selection_score() is None  # neither metrics.json's selection nor a CSV log
    (kd / "config.yaml").write_text("data: [unclosed\n")
    with pytest.raises(UsageError, match="invalid YAML"):
        RunDir(kd).config()


def test_teacher_metrics_logs_each_teachers_test_figures_once(tmp_path):
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    t1.mkdir()
    t2.mkdir()
    (t1 / "metrics.json").write_text(json.dumps({"test/frame_map": 0.25, "test/charades_map": 0.5, "params": {}}))
    teachers = {"a": str(t1 / "best.ckpt"), "b": str(t2 / "best.ckpt")}  # b has no metrics yet
    assert teacher_figures(teachers) == {"teacher/a/frame_map": 0.25, "teacher/a/charades_map": 0.5}
    logged = []
    logger = types.SimpleNamespace(log_metrics=lambda m, step: logged.append((m, step)))
    trainer = types.SimpleNamespace(logger=logger, is_global_zero=True)
    TeacherMetrics().on_fit_start(trainer, types.SimpleNamespace(hparams={"teachers": teachers}))
    assert logged == [({"teacher/a/frame_map": 0.25, "teacher/a/charades_map": 0.5}, 0)]
    TeacherMetrics().on_fit_start(trainer, types.SimpleNamespace(hparams={}))  # a model without teachers
    # a cross-fitted teacher (a list of fold checkpoints): one entry per fold teacher
    assert teacher_figures({"x": [str(t2 / "best.ckpt"), str(t1 / "best.ckpt")]}) == {
        "teacher/x[1]/frame_map": 0.25, "teacher/x[1]/charades_map": 0.5}
    trainer.is_global_zero = False
    TeacherMetrics().on_fit_start(trainer, types.SimpleNamespace(hparams={"teachers": teachers}))
    assert len(logged) == 1


def test_selection_score_from_metrics_json_else_the_csv_log(tmp_path):
    """The validation figure the tested checkpoint was chosen on: metrics.json's
    ``selection`` when it names that monitor, else the best value of the column over the
    run's CSV logs (a resumed run has several), blank cells skipped."""
    run = tmp_path / "runs" / "x"
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "logs" / "version_1").mkdir()
    (run / "logs" / "version_0" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/frame_map\n0,9,0.7,\n0,9,,0.31\n1,19,,0.52\n")
    (run / "logs" / "version_1" / "metrics.csv").write_text("epoch,step,val/frame_map\n2,29,0.47\n")
    (run / "metrics.json").write_text(json.dumps({"test/frame_map": 0.4}))
    assert RunDir(run).selection_score() == 0.52
    assert RunDir(run).selection_score("val/loss") is None
    (run / "metrics.json").write_text(json.dumps(
        {"test/frame_map": 0.4, "selection": {"monitor": "val/frame_map", "mode": "max", "score": 0.61}}))
    assert RunDir(run).selection_score() == 0.61  # recorded by RunReport: wins over the log
    assert RunDir(run).selection_score("val/charades_map") is None
    (run / "metrics.json").write_text(json.dumps({"test/frame_map": 0.4}))
    (run / "logs" / "version_1" / "metrics.csv").write_text("epoch,step,val/frame_map\n2,29,nan?\n")
    with pytest.raises(UsageError, match=r"version_1/metrics.csv: line 2, column val/frame_map: expected a number"):
        RunDir(run).selection_score()
