"""What does a trained student's distillation do? ``kd-detect diagnose RUN_DIR [--gradients]``.

**Atomic retrieval** (the default).

For the ``atomic`` plugin of a trained :class:`~kd_detect.modules.StudentModule` run, on the
test subset, every student atom's most similar teacher atom (after the plugin's own
projection heads) is looked up among (a) all atoms of the evaluation batch, (b) the atoms
of its own video only. Reported (DESIGN.md §3, ``L_atomic``):

* ``top1_batch``: the retrieved teacher atom is the right one (what InfoNCE optimises);
* ``top1_video``: it is at least in the right video -- high values with a low
  ``top1_within`` mean the contrast is won by telling *videos* apart (scene, camera: what
  teacher and student share when the teacher also sees RGB), not by action content;
* ``top1_within`` against ``chance_within`` (1 / atoms of the video, averaged).

**Gradient alignment** (``--gradients``). Does each loss push the student where the
*validation* detection loss wants it to go? At the run's checkpoint, with dropout off, the
gradients over the student detector's parameters ``θ`` (not the plugins' heads) of

* ``g_val = ∇θ L_BCE`` over the validation videos (their exact labels),
* ``g_bce = ∇θ L_BCE`` over the training videos (their possibly noisy labels),
* ``g_k = ∇θ λ_k L_k`` over the training videos, one per distillation term at its weight,

each the mean over batches, are compared: ``cos_val = cos(g, g_val)`` (> 0: a small step
on the term alone lowers the validation loss, to first order), ``cos_bce = cos(g, g_bce)``
(how much of the term only repeats the training labels), and ``norm_ratio = ‖g‖ / ‖g_bce‖``.
``total`` is ``g_bce + Σ_k g_k``, what a training step follows; ``total``'s ``cos_val``
above ``bce``'s means the distillation terms together turn the step towards validation.
A local, first-order reading at one point of training: a leave-one-out run is the
measurement, this is a cheap pointer to which term to question.
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
from kd_detect.runs import RunDir, section, training_order_seed

DESCRIPTION = ("Atomic-contrast retrieval rates of a trained student (right atom / right video / right atom within its "
               "video), or with --gradients each loss's gradient against the validation detection loss's.")


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


def alignment(val: Tensor, terms: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """``cos_val``, ``cos_bce`` (with ``terms["bce"]``) and ``norm_ratio`` (to
    ``terms["bce"]``) of every flat gradient in ``terms``, and of their sum as ``"total"``.
    A zero gradient has cosines 0."""
    def cos(a: Tensor, b: Tensor) -> float:
        den = float(a.norm() * b.norm())
        return float(a @ b) / den if den > 0 else 0.0

    ref = float(terms["bce"].norm())
    out = {}
    for name, g in {**terms, "total": torch.stack(list(terms.values())).sum(0)}.items():
        out[name] = {"cos_val": cos(g, val), "cos_bce": cos(g, terms["bce"]),
                     "norm_ratio": float(g.norm()) / ref if ref > 0 else float("nan")}
    return out


def term_gradients(student: Any, train: Any, val: Any) -> dict[str, Any]:
    """The flat gradients of :func:`alignment` for a :class:`~kd_detect.modules.StudentModule`
    over the batches of ``train`` and ``val`` (iterables of host-layout batches), dropout
    off. Returns ``{"val": g_val, "terms": {"bce": g_bce, "<plugin>": g_k, ...}, "weights":
    {plugin: λ_k}, "batches": (n_train, n_val)}``; a plugin of a teacher other than the only
    one is named ``teacher/plugin``."""
    params = [p for n, p in student.named_parameters() if not n.startswith("distill.") and p.requires_grad]

    def flat(loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])

    student.eval()
    single = len(student.distill) == 1
    g_val, n_val = None, 0
    for batch in map(to_model_layout, val):
        g = flat(student.detection_loss(student(batch), batch))
        g_val, n_val = (g if g_val is None else g_val + g), n_val + 1
    terms: dict[str, Tensor] = {}
    weights: dict[str, float] = {}
    n_train = 0
    for batch in map(to_model_layout, train):
        out = student(batch)
        parts = {"bce": student.detection_loss(out, batch)}
        for (tname, pname), value in student.distillation_losses(out, batch).items():
            plugin = student.distill[tname][pname]
            name = pname if single else f"{tname}/{pname}"
            weights[name] = student.distill_scale * float(plugin.weight)
            parts[name] = weights[name] * value
        for name, loss in parts.items():
            g = flat(loss)
            terms[name] = g if name not in terms else terms[name] + g
        n_train += 1
    if not n_val or not n_train:
        raise UsageError(f"no batches to measure on (training: {n_train}, validation: {n_val})")
    return {"val": g_val / n_val, "terms": {k: v / n_train for k, v in terms.items()}, "weights": weights,
            "batches": (n_train, n_val)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a student run directory (best.ckpt, config.yaml)")
    parser.add_argument("--data", help="feature file (default: the run config's data.path)")
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--plugin", default="atomic")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch (the negatives' pool)")
    parser.add_argument("--gradients", action="store_true",
                        help="instead: cosine of each loss's gradient with the validation detection loss's")
    parser.add_argument("--seed", type=int, default=0, help="--gradients: seed of the atoms' sampling")


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
    modalities = sorted({m for t in student.teachers.values() for m in t.modalities} | set(student.modalities))
    if args.gradients:
        data_cfg = {**data_cfg, "seed": training_order_seed(config)}  # the fit's order of the videos
        return _gradients(args, student, str(path), modalities, data_cfg)
    if args.teacher not in student.distill or args.plugin not in student.distill[args.teacher]:
        raise UsageError(f"{args.run}: the student has no plugin {args.teacher}/{args.plugin}")
    test = data_cfg.get("test_subset", "testing")
    data = FeatureData(str(path), modalities=modalities, train_subset=test, val_subset=test,
                       test_subset=test, eval_batch_size=args.batch_size)
    result = atomic_retrieval(student, data, args.teacher, args.plugin)
    print(json.dumps({"run": str(args.run), **result}, indent=2))
    return 0


def _gradients(args: argparse.Namespace, student: Any, path: str, modalities: list[str], data_cfg: dict) -> int:
    from kd_detect.data.feature_data import FeatureData

    keys = ("train_subset", "val_subset", "test_subset", "max_steps", "seed", "train_fraction", "folds", "fold",
            "unlabelled_subset")
    data = FeatureData(path, modalities=modalities, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                       **{k: data_cfg[k] for k in keys if data_cfg.get(k) is not None})
    torch.manual_seed(args.seed)
    grads = term_gradients(student, data.loader("train"), data.loader("val"))
    result = {"run": str(args.run), "batches": dict(zip(("training", "validation"), grads["batches"])),
              "weights": grads["weights"], "terms": alignment(grads["val"], grads["terms"])}
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_app("diagnose", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
