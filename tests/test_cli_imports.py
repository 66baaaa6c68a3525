"""The command line starts light (issue 14): which heavy packages each subcommand imports,
checked in a fresh interpreter (``sys.modules`` after running the command), not timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kd_detect.data.format import VideoRecord, write_feature_file

FIXTURES = Path(__file__).parent / "fixtures"
HEAVY = ("torch", "pytorch_lightning", "lightning", "wandb", "torchmetrics")

PROBE = """
import json, sys
from kd_detect.cli import main
try:
    status = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    status = exc.code
heavy = {p for p in %r if p in sys.modules}
print(json.dumps({"status": status, "heavy": sorted(heavy)}))
""" % (HEAVY,)


def imported(argv: list[str]) -> tuple[int, set[str]]:
    """Exit status of ``kd-detect argv`` and the heavy packages it imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["status"], set(result["heavy"])


@pytest.fixture(scope="module")
def rgb_file(tmp_path_factory) -> Path:
    """Label-free rgb features of the fixture student's shape (6-d, classes a, b, c)."""
    rng = np.random.default_rng(0)
    videos = [VideoRecord(f"v{i}", "testing", 4.0, {"rgb": rng.standard_normal((8, 6)).astype(np.float32)},
                          np.zeros((0, 3))) for i in range(2)]
    return write_feature_file(tmp_path_factory.mktemp("cli") / "rgb.h5", ["a", "b", "c"], ["rgb"], videos,
                              dtype="float32")


def test_help_imports_nothing_heavy():
    status, heavy = imported(["--help"])
    assert status == 0 and heavy == set()


def test_check_needs_no_torch(rgb_file):
    status, heavy = imported(["check", str(rgb_file)])
    assert status == 0 and heavy == set()


def test_a_subcommand_help_imports_nothing_heavy():
    # `predict` without --ckpt is LightningCLI's predict: the plain tool is `predict --ckpt`
    for argv in (["predict", "--ckpt", "x", "--help"], ["export", "--help"], ["cache-teacher", "--help"],
                 ["plot", "--help"]):
        status, heavy = imported(argv)
        assert status == 0 and heavy == set(), argv
    status, heavy = imported(["diagnose", "--help"])  # a lab-style tool: torch, but no Lightning
    assert status == 0 and heavy <= {"torch"}


@pytest.mark.slow  # three fresh interpreters importing Lightning; the fast tests above cover the dispatch
def test_export_and_predict_of_an_export_skip_wandb(rgb_file, tmp_path):
    """Lightning (and the torchmetrics it imports) are still loaded here: by the checkpoint's
    module class for export, by ``FeatureDataModule`` (a LightningDataModule) for predict."""
    status, heavy = imported(["export", "--ckpt", str(FIXTURES / "student.ckpt"), "--out", str(tmp_path / "s.pt")])
    assert status == 0 and (tmp_path / "s.pt").is_file()
    assert "wandb" not in heavy
    for model in ("s.pt", "s.state.pt"):
        status, heavy = imported(["predict", "--ckpt", str(tmp_path / model), "--data", str(rgb_file),
                                  "--out", str(tmp_path / "p.h5")])
        assert status == 0 and (tmp_path / "p.h5").is_file()
        assert "torch" in heavy  # the probe sees what it should
        assert "wandb" not in heavy, (model, heavy)
