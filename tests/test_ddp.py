"""Multi-GPU code on CPU: Lightning DDP with 2 processes (gloo). A teacher fit, exact test
metrics, and KD student fits with a live frozen teacher and with the teacher cache, all
through the public CLI with ``--trainer.devices=2 --trainer.strategy=ddp`` unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KD = str(Path(sys.executable).with_name("kd-detect"))
pytestmark = [pytest.mark.ddp, pytest.mark.timeout(900)]

COMMON = [
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--trainer.logger=kd_detect.loggers.CSVLogger",
    "--model.init_args.head.init_args.hidden=16", "--model.init_args.head.init_args.num_layers=2",
    "--trainer.accelerator=cpu",
]


def _run(*args: str, tmp: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT / 'tests' / 'helpers'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([KD, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"kd-detect {' '.join(args)}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_ddp_teacher_exact_metrics_and_students(synthetic_h5, tmp_path):
    data = f"--data.path={synthetic_h5}"
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    teacher = tmp_path / "teacher"
    # 1. teacher fit on 2 processes, tested on 2 processes; its event threshold chosen on validation;
    # with an average of the weights (kd_detect.callbacks.EMA), which the test after fit must score
    events = ["--model.init_args.event_map=true", "--model.init_args.event_threshold=auto"]
    ema = ["--trainer.callbacks+=kd_detect.callbacks.EMA", "--trainer.callbacks.epochs=1"]
    _run("fit", "--config", "experiments/synthetic_teacher.yaml", data, *COMMON, *ddp, *events, *ema,
         "--trainer.max_epochs=2", f"--trainer.default_root_dir={teacher}", "--test_after_fit=true", tmp=tmp_path)
    assert sorted(p.name for p in teacher.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    ddp_map = _metrics(teacher)["test/frame_map"]
    # 2. the same checkpoint evaluated by one process (no EMA callback: the checkpoint's
    # state_dict is the average): every test video counted once either way
    single = tmp_path / "single"
    _run("test", "--config", "experiments/synthetic_teacher.yaml", data, *COMMON, *events, "--trainer.devices=1",
         f"--trainer.default_root_dir={single}", f"--ckpt_path={teacher / 'best.ckpt'}", tmp=tmp_path)
    assert _metrics(single)["test/frame_map"] == pytest.approx(ddp_map, abs=1e-6)
    assert _metrics(single)["test/charades_map"] == pytest.approx(_metrics(teacher)["test/charades_map"], abs=1e-6)
    for key in ("test/event_threshold", "test/event_map"):
        assert _metrics(single)[key] == pytest.approx(_metrics(teacher)[key], abs=1e-6), key
    # ... and the threshold the two processes chose is the one a single process chooses on the
    # checkpoint's validation predictions (every validation video counted once)
    import torch

    from kd_detect.data.batch import MASK, META, to_model_layout
    from kd_detect.data.feature_data import FeatureData
    from kd_detect.metrics import EventThresholdSearch
    from kd_detect.modules import load_detector

    model = load_detector(teacher / "best.ckpt").eval()
    search = EventThresholdSearch(model.num_classes)
    dm = FeatureData(str(synthetic_h5), modalities=model.modalities, eval_batch_size=7)
    with torch.no_grad():
        for batch in dm.loader("val"):
            meta, batch = batch[META], to_model_layout(batch)
            search.update(torch.sigmoid(model(batch).logits), batch[MASK], meta["duration"], meta["segments"],
                          meta["video_id"])
    dm.close()
    assert model.event_threshold_chosen == search.compute()[0]
    assert _metrics(teacher)["test/event_threshold"] == pytest.approx(model.event_threshold_chosen)  # logged as float32
    # 3. KD student with the live frozen teacher on 2 processes
    probe = tmp_path / "probe"
    student = tmp_path / "student"
    callbacks = ("--trainer.callbacks=[{class_path: kd_detect.callbacks.RunCheckpoint}, "
                 "{class_path: kd_detect.callbacks.RunReport}, "
                 f"{{class_path: ddp_probe.TeacherProbe, init_args: {{out_dir: {probe}}}}}]")
    _run("fit", "--config", "experiments/synthetic_kd.yaml", data, *COMMON, *ddp, "--trainer.max_epochs=1",
         f"--model.init_args.teachers.teacher={teacher / 'best.ckpt'}", f"--trainer.default_root_dir={student}",
         "--model.init_args.distill.atomic.init_args.negatives=batch",
         "--model.init_args.distill.atomic.init_args.gather_distributed=true", "--test_after_fit=true",
         callbacks, tmp=tmp_path)
    reports = [json.loads((probe / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["teachers"]["teacher"] == {"eval": True, "frozen": True, "identical": True, "outside_ddp": True}
    assert "test/frame_map" in _metrics(student)
    # 4. KD student reading the teacher cache on 2 processes
    cache = tmp_path / "cache.h5"
    _run("cache-teacher", "--ckpt", str(teacher / "best.ckpt"), "--data", str(synthetic_h5), "--out", str(cache),
         tmp=tmp_path)
    cached = tmp_path / "cached"
    _run("fit", "--config", "experiments/synthetic_kd_cached.yaml", data, *COMMON, *ddp, "--trainer.max_epochs=1",
         f"--model.init_args.teachers.teacher={teacher / 'best.ckpt'}",
         f"--model.init_args.teacher_caches.teacher={cache}", f"--trainer.default_root_dir={cached}",
         "--test_after_fit=true", tmp=tmp_path)
    assert "test/frame_map" in _metrics(cached)
