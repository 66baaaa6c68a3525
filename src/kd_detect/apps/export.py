"""``kd-detect export --ckpt student.ckpt --out student.pt`` (DESIGN.md §7).

Writes the TorchScript ``student.pt`` and the plain ``student.state.pt`` of the checkpoint's
RGB-only detector (what they hold, and what can be exported: :mod:`kd_detect.modules.deploy`).
Before writing, the exported module is run next to the checkpoint's module on a padded
batch of random features; a difference above 1e-5 aborts the export. Both files are written
atomically and never over the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kd_detect.apps import main as run_app
from kd_detect.errors import CheckpointError
from kd_detect.io import atomic_write, refuse_inputs

DESCRIPTION = (
    "Export the RGB-only detector of a kd_detect checkpoint (a StudentModule without its "
    "teachers and projection heads, or an RGB-only DetectorModule/TeacherModule) as TorchScript "
    "(model(rgb[, mask]) -> probabilities (B, C, T); model.classes, model.in_dim) plus a plain "
    "<name>.state.pt (state dict + rebuild config)."
)


def export(ckpt: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path]:
    """Export the RGB-only detector of checkpoint ``ckpt`` to ``out`` (TorchScript) and
    :func:`state_path` (``out``) (plain state dict + config). Returns both paths."""
    import torch

    from kd_detect.modules.deploy import build_from_config, check_same_outputs, deployable, state_path
    from kd_detect.modules.inference import load_without_teachers
    from kd_detect.modules.loading import read_checkpoint

    ckpt, out = Path(ckpt), Path(out)
    state_file = state_path(out)
    refuse_inputs(out, (ckpt,))
    refuse_inputs(state_file, (ckpt,))
    raw = read_checkpoint(ckpt)
    head_config = (raw.get("hyper_parameters") or {}).get("head")
    # a student's teachers are not needed (nor loaded) to export it
    module = load_without_teachers(ckpt, raw)
    del raw
    deployed, config = deployable(module, ckpt, head_config)
    try:
        scripted = torch.jit.script(deployed)
    except Exception as err:  # noqa: BLE001 - a head TorchScript cannot compile
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{ckpt}: head {config['head']['class_path']} cannot be compiled by torch.jit.script ({first})"
        ) from err
    check_same_outputs(module, scripted, str(ckpt), config["in_dim"])
    state = {**config, "state_dict": {k: v.detach().cpu().clone() for k, v in deployed.state_dict().items()}}
    rebuilt = build_from_config(config)
    rebuilt.load_state_dict(state["state_dict"])
    check_same_outputs(module, rebuilt.eval(), f"{ckpt} (state file)", config["in_dim"])
    with atomic_write(out, inputs=(ckpt,)) as tmp:
        torch.jit.save(scripted, str(tmp))
    with atomic_write(state_file, inputs=(ckpt, out)) as tmp:
        torch.save(state, tmp)
    return out, state_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="kd_detect checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="TorchScript file to write, e.g. student.pt")


def run(args: argparse.Namespace) -> int:
    import torch

    from kd_detect.io import ensure_writable_file

    ensure_writable_file(args.out, "export, --out")  # before the checkpoint is loaded
    script_file, state_file = export(args.ckpt, args.out)
    model = torch.jit.load(str(script_file))
    print(f"wrote {script_file} (TorchScript: rgb (B, {model.in_dim}, T) -> probabilities "
          f"(B, {len(model.classes)}, T)) and {state_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_app("export", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

