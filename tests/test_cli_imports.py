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


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """An RGB-only model as `kd-detect export` writes it (TorchScript and state file), built
    here from its config so no Lightning checkpoint is loaded: the fixture student's shape."""
    import torch

    from kd_detect.modules.deploy import STATE_FORMAT, build_from_config

    config = {"kd_detect_export": STATE_FORMAT, "modality": "rgb", "embed": None, "in_dim": 6, "num_classes": 3,
              "classes": ["a", "b", "c"],
              "head": {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 8, "num_layers": 1}}}
    torch.manual_seed(0)
    model = build_from_config(config).eval()
    root = tmp_path_factory.mktemp("export")
    torch.save({**config, "state_dict": model.state_dict()}, root / "s.state.pt")
    torch.jit.save(torch.jit.script(model), str(root / "s.pt"))
    return {"script": root / "s.pt", "state": root / "s.state.pt"}


def test_predict_of_an_export_needs_only_torch(exported, rgb_file, tmp_path):
    """`predict` reads the file through FeatureData (no LightningDataModule): an exported
    model predicts with torch alone, from a feature file and from a feature folder."""
    for kind, model in exported.items():
        out = tmp_path / f"{kind}.h5"
        status, heavy = imported(["predict", "--ckpt", str(model), "--data", str(rgb_file), "--out", str(out)])
        assert status == 0 and out.is_file(), kind
        assert heavy == {"torch"}, (kind, heavy)  # the probe sees torch: it would see the others
    folder = tmp_path / "rgb"
    folder.mkdir()
    np.save(folder / "v0.npy", np.ones((5, 6), np.float32))
    status, heavy = imported(["predict", "--ckpt", str(exported["state"]), "--features", str(folder),
                              "--step-seconds", "0.5", "--out", str(tmp_path / "f.h5")])
    assert status == 0 and (tmp_path / "f.h5").is_file() and heavy == {"torch"}


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


@pytest.mark.slow  # three fresh interpreters, one importing Lightning; test_predict_of_an_export_needs_only_torch
def test_export_and_predict_of_an_export_skip_wandb(rgb_file, tmp_path):  # is the fast variant of the predict part
    """Export loads the checkpoint's module class, so Lightning (and the torchmetrics it
    imports) but not wandb; predicting from what it wrote needs torch alone."""
    status, heavy = imported(["export", "--ckpt", str(FIXTURES / "student.ckpt"), "--out", str(tmp_path / "s.pt")])
    assert status == 0 and (tmp_path / "s.pt").is_file()
    assert "wandb" not in heavy
    for model in ("s.pt", "s.state.pt"):
        status, heavy = imported(["predict", "--ckpt", str(tmp_path / model), "--data", str(rgb_file),
                                  "--out", str(tmp_path / "p.h5")])
        assert status == 0 and (tmp_path / "p.h5").is_file()
        assert heavy == {"torch"}, (model, heavy)
