"""What does a trained student's atomic contrast match on? ``kd-detect diagnose RUN_DIR``.

For the ``atomic`` plugin of a trained :class:`~kd_detect.modules.StudentModule` run, on the
test subset, every student atom's most similar teacher atom (after the plugin's own
projection heads) is looked up among (a) all atoms of the evaluation batch, (b) the atoms
of its own video only. Reported (DESIGN.md §3, ``L_atomic``):

* ``top1_batch``: the retrieved teacher atom is the right one (what InfoNCE optimises);
* ``top1_video``: it is at least in the right video -- high values with a low
  ``top1_within`` mean the contrast is won by telling *videos* apart (scene, camera: what
  teacher and student share when the teacher also sees RGB), not by action content;
* ``top1_within`` against ``chance_within`` (1 / atoms of the video, averaged).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kd_detect.apps import main as run_app
from kd_detect.data.batch import MASK, to_model_layout
from kd_detect.distill.atomic import InBatchContrastive, atom_index
from kd_detect.errors import UsageError
from kd_detect.runs import RunDir, section

DESCRIPTION = "Atomic-contrast retrieval rates of a trained student (right atom / right video / right atom within its video)."


def retrieval_rates(q: Tensor, k: Tensor, video: Tensor) -> dict[str, float]:
    """Top-1 rates of student embeddings ``q (N, E)`` retrieving their teacher embedding
    ``k (N, E)`` (row ``i`` is the positive of row ``i``); ``video (N,)`` the atoms' videos.
    Returns sums (not means) so batches can be added: ``n`` is the atom count."""
    sim = q @ k.T
    n = sim.shape[0]
    ar = torch.arange(n, device=sim.device)
    top = sim.argmax(1)
    same = video[:, None] == video[None, :]
    within = sim.masked_fill(~same, float("-inf")).argmax(1)
    return {
        "n": float(n),
        "top1_batch": float((top == ar).sum()),
        "top1_video": float((video[top] == video).sum()),
        "top1_within": float((within == ar).sum()),
        "chance_within": float((1.0 / same.sum(1).float()).sum()),
    }


def atomic_retrieval(student: Any, data: Any, teacher: str = "teacher", plugin: str = "atomic") -> dict[str, float]:
    """Mean rates of :func:`retrieval_rates` over the test batches of ``data`` (a
    :class:`~kd_detect.data.feature_data.FeatureData`). Every atom of a batch is used: a copy
    of the plugin without its ``max_atoms`` sampling (the student's own plugin is not changed)."""
    module = student.distill[teacher][plugin]
    if not isinstance(module, InBatchContrastive):
        raise UsageError(f"plugin {teacher}/{plugin} is a {type(module).__name__}, not an in-batch contrastive loss")
    if teacher not in student.teachers:
        raise UsageError(f"teacher {teacher!r} is not loaded (a student trained from a teacher cache names its "
                         f"checkpoint with --model.init_args.teachers.{teacher}=PATH); loaded: {sorted(student.teachers)}")
    net = student.teachers[teacher].eval()
    student.eval()
    every_atom = copy.copy(module)  # shares the projection heads; only max_atoms differs
    every_atom.max_atoms = 0
    totals: dict[str, float] = {}
    with torch.no_grad():
        for batch in map(to_model_layout, data.loader("test")):
            s, t = student(batch), net(batch)
            mask = batch[MASK].bool()
            ids, n = atom_index(mask, every_atom.window)
            step_video = torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]
            video = torch.zeros(n, dtype=torch.long).index_put_((ids,), step_video)
            q, k = every_atom.embed(*every_atom.atoms(s.features, t.features, batch[MASK]))
            for key, value in retrieval_rates(q, k, video).items():
                totals[key] = totals.get(key, 0.0) + value
    n = totals.pop("n", 0.0)
    if not n:
        raise UsageError("the test subset gave no atoms")
    return {"atoms": int(n), **{key: value / n for key, value in totals.items()}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a student run directory (best.ckpt, config.yaml)")
    parser.add_argument("--data", help="feature file (default: the run config's data.path)")
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--plugin", default="atomic")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch (the negatives' pool)")


def run(args: argparse.Namespace) -> int:
    from kd_detect.data.feature_data import FeatureData
    from kd_detect.modules.loading import load_detector
    from kd_detect.modules.student import StudentModule

    run_dir = RunDir(args.run)
    config = run_dir.config()
    data_cfg = section(config, "data")
    path = args.data or run_dir.data_path()
    if not path:
        raise UsageError(f"{args.run}/config.yaml names no data.path; give --data")
    student = load_detector(run_dir.checkpoint(), expect=StudentModule)
    if args.teacher not in student.distill or args.plugin not in student.distill[args.teacher]:
        raise UsageError(f"{args.run}: the student has no plugin {args.teacher}/{args.plugin}")
    modalities = sorted({m for t in student.teachers.values() for m in t.modalities} | set(student.modalities))
    test = data_cfg.get("test_subset", "testing")
    data = FeatureData(str(path), modalities=modalities, train_subset=test, val_subset=test,
                             test_subset=test, eval_batch_size=args.batch_size)
    result = atomic_retrieval(student, data, args.teacher, args.plugin)
    print(json.dumps({"run": str(args.run), **result}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_app("diagnose", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
