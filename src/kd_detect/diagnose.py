"""What does a trained student's atomic contrast match on? ``python -m kd_detect.diagnose RUN_DIR``.

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
import json
import sys
from pathlib import Path

import torch
import yaml
from torch import Tensor

from kd_detect.data.batch import MASK, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.distill.atomic import InBatchContrastive, atom_index
from kd_detect.modules.loading import load_detector
from kd_detect.modules.student import StudentModule


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


@torch.no_grad()
def atomic_retrieval(
    student: StudentModule, data: FeatureDataModule, teacher: str = "teacher", plugin: str = "atomic"
) -> dict[str, float]:
    """Mean rates of :func:`retrieval_rates` over the test batches of ``data``."""
    module = student.distill[teacher][plugin]
    if not isinstance(module, InBatchContrastive):
        raise TypeError(f"plugin {teacher}/{plugin} is a {type(module).__name__}, not an in-batch contrastive loss")
    if teacher not in student.teachers:
        raise ValueError(f"teacher {teacher!r} is not loaded (a student trained from a teacher cache names its "
                         f"checkpoint with --model.init_args.teachers.{teacher}=PATH); loaded: {sorted(student.teachers)}")
    net = student.teachers[teacher].eval()
    student.eval()
    totals: dict[str, float] = {}
    for batch in map(to_model_layout, data.test_dataloader()):
        s, t = student(batch), net(batch)
        mask = batch[MASK].bool()
        ids, n = atom_index(mask, module.window)
        step_video = torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]
        video = torch.zeros(n, dtype=torch.long).index_put_((ids,), step_video)
        keep = module.max_atoms
        module.max_atoms = 0  # every atom of the batch
        try:
            q, k = module.embed(*module.atoms(s.features, t.features, batch[MASK]))
        finally:
            module.max_atoms = keep
        for key, value in retrieval_rates(q, k, video).items():
            totals[key] = totals.get(key, 0.0) + value
    n = totals.pop("n", 0.0)
    if not n:
        raise ValueError("the test subset gave no atoms")
    return {"atoms": int(n), **{key: value / n for key, value in totals.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_detect.diagnose", description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a student run directory (best.ckpt, config.yaml)")
    parser.add_argument("--data", help="feature file (default: the run config's data.path)")
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--plugin", default="atomic")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch (the negatives' pool)")
    args = parser.parse_args(argv)
    config = yaml.safe_load((args.run / "config.yaml").read_text()) if (args.run / "config.yaml").is_file() else {}
    data_cfg = config.get("data", {}) or {}
    path = args.data or data_cfg.get("path")
    if not path:
        parser.error(f"{args.run}/config.yaml names no data.path; give --data")
    try:
        student = load_detector(args.run / "best.ckpt", expect=StudentModule)
        if args.teacher not in student.distill or args.plugin not in student.distill[args.teacher]:
            raise ValueError(f"{args.run}: the student has no plugin {args.teacher}/{args.plugin}")
        modalities = sorted({m for t in student.teachers.values() for m in t.modalities} | set(student.modalities))
        test = data_cfg.get("test_subset", "testing")
        data = FeatureDataModule(str(path), modalities=modalities, train_subset=test, val_subset=test,
                                 test_subset=test, eval_batch_size=args.batch_size)
        result = atomic_retrieval(student, data, args.teacher, args.plugin)
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"run": str(args.run), **result}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
