"""Issue-6 'done when', per real dataset: a fixture in the release layout -> the converter's
CLI (what `make data DATASET=<name> RAW=<dir>` runs) -> `kd-detect check` clean -> the
dataset's teacher experiment and then its `<name>_kd` experiment, run end to end on the
converted file with short overrides (the teacher checkpoint handed to the student the way
`make train` does)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from kd_detect.apps.lightning import lightning_main
from kd_detect.cli import main
from tests.helpers import fixtures_release

ROOT = Path(__file__).resolve().parents[1]
os.environ["WANDB_MODE"] = "disabled"
SHORT = [
    "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--trainer.logger=kd_detect.loggers.CSVLogger", "--model.init_args.head.init_args.hidden=16",
    "--model.init_args.head.init_args.num_layers=2", "--data.batch_size=4", "--test_after_fit=true",
]


@pytest.mark.parametrize("name", ["charades", "tsu", "pku_mmd", "multithumos"])
def test_release_fixture_to_trained_student(name, tmp_path, capsys):
    raw = getattr(fixtures_release, f"make_{name}_raw")(tmp_path / "raw")
    out = tmp_path / "data" / f"{name}.h5"
    converter = importlib.import_module(f"data_prep.{name}")
    assert converter.main(["--raw", str(raw), "--out", str(out)]) == 0
    assert main(["check", str(out)]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    data = f"--data.path={out}"
    teacher = tmp_path / "runs" / f"{name}_teacher"
    lightning_main(["fit", "--config", str(ROOT / f"experiments/{name}_teacher.yaml"), data, *SHORT,
                    f"--trainer.default_root_dir={teacher}"])
    student = tmp_path / "runs" / f"{name}_kd"
    lightning_main(["fit", "--config", str(ROOT / f"experiments/{name}_kd.yaml"), data, *SHORT,
                    f"--trainer.default_root_dir={student}",
                    *[f"--model.init_args.teachers.{t}={teacher / 'best.ckpt'}" for t in ("flow", "pose")
                      if t in (ROOT / f"experiments/{name}_kd.yaml").read_text()]])
    metrics = json.loads((student / "metrics.json").read_text())
    assert 0.0 <= metrics["test/frame_map"] <= 1.0 and "test/charades_map" in metrics
    if name in ("tsu", "pku_mmd"):  # their papers report event-level mAP
        assert {"test/event_map@0.1", "test/event_map@0.3", "test/event_map@0.5"} <= set(metrics)
        # the segment cut chosen on validation (event_threshold: auto), kept in the checkpoint
        from kd_detect.metrics import EVENT_THRESHOLDS
        from kd_detect.modules.detector import EVENT_THRESHOLD
        from kd_detect.modules.loading import read_checkpoint

        assert metrics["test/event_threshold"] == pytest.approx(read_checkpoint(student / "best.ckpt")[EVENT_THRESHOLD])
        assert min(abs(metrics["test/event_threshold"] - t) for t in EVENT_THRESHOLDS) < 1e-6
    assert (student / "charades_submission.txt").is_file()
