"""wandb sweep files: every swept key is a real CLI key, and the agent's rendered command
carries the sampled values into the plugins (no wandb server needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from test_experiments import TINY, ParseOnly, tiny_teacher  # noqa: F401  (fixture)

from kd_detect.apps.lightning import lightning_main
from kd_detect.lab.sweep import render_command

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))
os.environ["WANDB_MODE"] = "disabled"


def _sample(spec: dict) -> object:
    if "values" in spec:
        return spec["values"][-1]
    if "value" in spec:
        return spec["value"]
    return spec["max"]


def _argv(command: list[str]) -> list[str]:
    """What kd-detect receives: drop `env` and the program name."""
    assert command[0].endswith("env") and command[1] == "kd-detect"
    return command[2:]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_keys_are_cli_keys(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"] == {"name": "val/frame_map", "goal": "maximize"}
    params = {key: _sample(spec) for key, spec in sweep["parameters"].items()}
    assert {"model.init_args.distill.atomic.init_args.weight", "model.init_args.distill.global.init_args.weight",
            "model.init_args.distill.boundary.init_args.weight"} <= set(params)
    argv = _argv(render_command(sweep, params))
    assert argv[0] == "fit" and f"experiments/{path.stem}.yaml" in argv
    cli = lightning_main(argv[1:] + ["--data.path=unused.h5"], run=False, cli_class=ParseOnly)
    for key, value in params.items():
        node = cli.config
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    # a typo in a key is caught here, not at 2 a.m. by a crashing sweep
    with pytest.raises(SystemExit):
        lightning_main(["--config", str(ROOT / "experiments" / f"{path.stem}.yaml"), "--data.path=unused.h5",
                        "--model.init_args.distill.atomic.init_args.weigth=1.0"], run=False, cli_class=ParseOnly)


def test_rendered_sweep_command_reaches_the_plugins(synthetic_h5, tiny_teacher, tmp_path, monkeypatch):
    sweep = yaml.safe_load((ROOT / "experiments/sweeps/synthetic_kd.yaml").read_text())
    params = {
        "model.init_args.distill.atomic.init_args.weight": 0.37,
        "model.init_args.distill.global.init_args.weight": 2.5,
        "model.init_args.distill.boundary.init_args.weight": 0.11,
        "model.init_args.distill.global.init_args.tau_r": 0.2,
        "model.init_args.distill.atomic.init_args.window": 2,
    }
    argv = _argv(render_command(sweep, params))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_RUN_ID", "run42")
    cli = lightning_main(
        argv + [f"--data.path={synthetic_h5}", f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=1",
                *TINY, f"--model.init_args.teachers.teacher={tiny_teacher['ckpt']}"]
    )
    plugins = cli.model.distill["teacher"]
    assert (plugins["atomic"].weight, plugins["global"].weight, plugins["boundary"].weight) == (0.37, 2.5, 0.11)
    assert plugins["global"].tau_r == 0.2 and plugins["atomic"].window == 2
    assert cli.trainer.default_root_dir == str(tmp_path / "run42")  # one directory per sweep run
