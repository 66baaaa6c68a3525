"""Cheap measurements of the distillation options of issue 13 C on the synthetic benchmark.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/ablations/measure_options.py \
        --data data/synthetic.h5 --teacher runs/synthetic_teacher/best.ckpt [--epochs 2]

Prints, for the synthetic_kd student (PDAN-128, weights 0.1):
1. L_global / L_boundary over the training set, student in train mode (dropout), eval mode and
   ``distill_from: clean``, uncentred and centred; at initialisation and after ``--epochs`` of
   KD training (``clean`` must equal ``eval``);
2. the false negatives per atom (window 4, batch 8: other atoms of the batch with the anchor's
   active-class set), overall and for action / background anchors;
3. the ``weight: auto`` weights resolved after a 20-step warm-up (share 0.5), dropout and clean;
4. the cost of ``clean``: seconds per training step (forward + backward, teacher included),
   median of 15 steps on the same batch, for dropout and clean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pytorch_lightning as pl
import torch

from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.distill import BoundarySaliency, GlobalContextualRelation
from kd_detect.distill._common import masked, valid_rows
from kd_detect.distill._contrastive import atom_index, window_average
from kd_detect.modules import StudentModule, instantiate

HEAD = {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 128}}


def student(dm, teacher, distill_from="dropout", weight=0.1):
    plugins = {
        "atomic": {"class_path": "kd_detect.distill.AtomicContrastive", "init_args": {"weight": weight}},
        "global": {"class_path": "kd_detect.distill.GlobalContextualRelation", "init_args": {"weight": weight}},
        "boundary": {"class_path": "kd_detect.distill.BoundarySaliency", "init_args": {"weight": weight}},
    }
    return instantiate(
        StudentModule, head=HEAD, modalities=["rgb"], num_classes=dm.num_classes, classes=dm.classes,
        modality_dims={"rgb": dm.modality_dims["rgb"]}, lr=1e-3, teachers={"teacher": teacher},
        distill=plugins, distill_from=distill_from, auto_share=0.5, auto_warmup=20,
    )


def relation_losses(model, dm) -> dict[str, float]:
    losses = {f"{n}{'_c' if c else ''}": (cls(center=c), []) for c in (False, True)
              for n, cls in (("global", GlobalContextualRelation), ("boundary", BoundarySaliency))}
    for _, (p, _) in losses.items():
        p.setup(model.feature_dim, model.teacher_dims["teacher"], model.num_classes)
    out = {}
    with torch.no_grad():
        for mode in ("train", "eval", "clean"):
            sums = {k: 0.0 for k in losses}
            n = 0
            torch.manual_seed(0)
            for batch in dm.train_dataloader():
                model.train(mode != "eval")
                s = model(batch)
                if mode == "clean":
                    s = model.distill_forward(s, batch)
                t = model.teacher_outputs("teacher", batch)
                for k, (p, _) in losses.items():
                    sums[k] += float(p(s, t, batch["mask"]))
                n += 1
            out.update({f"{k}/{mode}": round(v / n, 4) for k, v in sums.items()})
    model.train()
    return out


def false_negatives(dm, window=4) -> dict[str, float]:
    per_anchor, action, background, atoms = [], [], [], []
    for batch in dm.train_dataloader():
        mask = batch["mask"]
        ids, n = atom_index(mask, window)
        rows = valid_rows(masked((batch["labels"] > 0.5).float(), mask), mask)
        sets = window_average(rows, ids, n) > 0
        same = (sets[:, None, :] == sets[None, :, :]).all(-1)
        count = same.sum(1) - 1  # minus the anchor itself
        empty = ~sets.any(1)
        per_anchor.append(count.float())
        action.append(count[~empty].float())
        background.append(count[empty].float())
        atoms.append(torch.full((n,), float(n - 1)))
    cat = lambda xs: torch.cat(xs)  # noqa: E731
    return {
        "negatives_per_atom": round(float(cat(atoms).mean()), 1),
        "false_negatives_per_atom": round(float(cat(per_anchor).mean()), 2),
        "action_anchor_false_negatives": round(float(cat(action).mean()), 2),
        "background_anchor_false_negatives": round(float(cat(background).mean()), 2),
        "background_anchor_share": round(float(cat(background).numel() / cat(per_anchor).numel()), 3),
    }


def trainer(steps=None, epochs=1):
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      max_epochs=epochs, max_steps=steps or -1)


def step_seconds(dm, teacher, mode, steps=15) -> float:
    pl.seed_everything(0)
    model = student(dm, teacher, mode).train()
    batch = next(iter(dm.train_dataloader()))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.training_step(batch, 0).backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad()
    return round(statistics.median(times), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synthetic.h5")
    ap.add_argument("--teacher", default="runs/synthetic_teacher/best.ckpt")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dm = FeatureDataModule(args.data, modalities=["rgb", "flow", "pose"], batch_size=8, val_subset="validation")
    dm.setup("fit")
    result = {"false_negatives": false_negatives(dm)}
    pl.seed_everything(0)
    model = student(dm, args.teacher, "clean")
    result["init"] = relation_losses(model, dm)
    trainer(epochs=args.epochs).fit(model, datamodule=dm)
    result[f"after_{args.epochs}_epochs_kd_clean"] = relation_losses(model, dm)
    for mode in ("dropout", "clean"):
        pl.seed_everything(0)
        auto = student(dm, args.teacher, mode, weight="auto")
        trainer(steps=20, epochs=5).fit(auto, datamodule=dm)
        result[f"auto_weights_{mode}"] = {k: round(p.weight, 4) for k, p in auto.distill["teacher"].items()}
    result["seconds_per_step"] = {m: step_seconds(dm, args.teacher, m) for m in ("dropout", "clean")}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
