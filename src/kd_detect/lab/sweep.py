"""``make sweep EXP=name [COUNT=20]``: create the wandb sweep of
``experiments/sweeps/<name>.yaml`` and run an agent on this machine.

Needs wandb credentials and network (a sweep lives on the wandb server); without them it
says so in one line. Every run is ``kd-detect fit --config experiments/<name>.yaml
--key=value ...``: the swept values are ordinary CLI overrides.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from kd_detect.loggers import has_wandb_credentials


def render_command(sweep: dict, params: dict[str, object], env: str = "/usr/bin/env") -> list[str]:
    """The command line the wandb agent runs for ``params`` (``${env}``, ``${program}``,
    ``${args}`` as ``--key=value``, ``${args_no_hyphens}`` as ``key=value``)."""
    out: list[str] = []
    for item in sweep.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]:
        if item == "${env}":
            out.append(env)
        elif item == "${interpreter}":
            out.append(sys.executable)
        elif item == "${program}":
            out.append(str(sweep["program"]))
        elif item == "${args}":
            out += [f"--{k}={v}" for k, v in params.items()]
        elif item == "${args_no_hyphens}":
            out += [f"{k}={v}" for k, v in params.items()]
        else:
            out.append(str(item))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make sweep", description=__doc__)
    parser.add_argument("exp")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "kd_detect"))
    args = parser.parse_args(argv)
    path = Path("experiments/sweeps") / f"{args.exp}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.yaml"))
        print(f"make sweep: error: {path} not found (sweeps: {', '.join(have)})", file=sys.stderr)
        return 1
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled") or not has_wandb_credentials():
        print("make sweep: error: a wandb sweep needs the wandb server: run `wandb login` (and unset "
              "WANDB_MODE=offline/disabled) first", file=sys.stderr)
        return 1
    import wandb

    sweep = yaml.safe_load(path.read_text())
    sweep_id = wandb.sweep(sweep, project=args.project)
    # the CLI agent runs the sweep's `command` in subprocesses (what we want for DDP)
    os.execvp("wandb", ["wandb", "agent", "--count", str(args.count), f"{args.project}/{sweep_id}"])
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
