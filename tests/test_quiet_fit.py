"""Issue 16: a fit prints what matters once. Before, every fit also printed Lightning's
litlogger tip, wandb's "anonymous setting has no effect" (even with WANDB_MODE=disabled),
torch's LeafSpec deprecation, the log_every_n_steps warning, and the test figures twice
(our RunReport table and Lightning's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("litlogger", "anonymous setting", "LeafSpec", "log_every_n_steps", "Test metric")


def test_a_tiny_fit_prints_none_of_the_noise(synthetic_h5, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kd_detect.cli", "fit", "--config", str(ROOT / "experiments/synthetic_teacher.yaml"),
         f"--data.path={synthetic_h5}", f"--trainer.default_root_dir={run}", "--trainer.max_epochs=1",
         "--test_after_fit=true"],  # the experiment's own logger (wandb, disabled here)
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert [n for n in NOISE if n in out] == [], out
    # the filters are precise: Lightning's other messages and our one table remain
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in out
    assert out.count("kd_detect results") == 1 and "test/frame_map" in out
    assert (run / "metrics.json").is_file()


def test_the_wandb_logger_does_not_pass_anonymous(tmp_path, monkeypatch):
    from kd_detect.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert "anonymous" not in WandbLogger(save_dir=str(tmp_path))._wandb_init
    assert WandbLogger(save_dir=str(tmp_path), anonymous=True)._wandb_init["anonymous"] == "allow"
