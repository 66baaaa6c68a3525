"""Pilot (not a package feature): where does a student started from its teacher begin?

``init_from: teacher`` copies an early-fusion teacher's head into the RGB student, keeping the
input layer's RGB columns. At step 0 the student therefore computes the teacher with every
other modality at its training mean (0 after the teacher's standardisation). This prints, for
each teacher checkpoint, its test frame mAP with all its inputs and with only the student's
(the rest at their mean), and the mean norm of its input layer's columns per modality, i.e.
how much each modality's input dimension weighs at the first layer. For a late-fusion teacher,
where the student starts from the head of its own stream, "only the student's" is that
stream's head alone (one modality in ``--keep``).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/teacher_at_the_mean.py data/synthetic.h5 \
        runs/compare/seed{0,1,2}/synthetic_teacher/best.ckpt [--keep rgb]

Measured figures: README, "Starting the student from the teacher's head does not pay".
"""

from __future__ import annotations

import argparse

import torch

from kd_detect.data.batch import LABELS, MASK, to_model_layout
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.metrics import FrameMAP
from kd_detect.modules.loading import load_detector


def column_norms(teacher) -> dict[str, float]:
    """Frobenius norm of the input layer's columns of each modality, per input dimension
    (early fusion; a late-fusion teacher has one input layer per stream: empty)."""
    if getattr(teacher, "fusion", "early") != "early":
        return {}
    weight = dict(teacher.head.named_parameters())["input_conv.weight"].detach()
    out, start = {}, 0
    for m in teacher.modalities:
        d = teacher.modality_dims[m]
        out[m] = float(weight[:, start:start + d].norm() / d**0.5)
        start += d
    return out


def test_map(teacher, data: str, keep: list[str]) -> tuple[float, float]:
    """Test frame mAP (%) of the teacher as is, and with the modalities not in ``keep`` at their mean."""
    dm = FeatureDataModule(data, batch_size=8, modalities=list(teacher.modalities))
    dm.setup("test")
    full, kept = FrameMAP(teacher.num_classes), FrameMAP(teacher.num_classes)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            batch = to_model_layout(batch)
            mask = batch[MASK].bool()
            full.update(teacher(batch).logits.sigmoid(), batch[LABELS], mask)
            if getattr(teacher, "fusion", "early") == "late":
                (m,) = keep
                stream = teacher.heads[m](teacher.encode(batch)[m], batch[MASK])
                kept.update(stream.logits.sigmoid(), batch[LABELS], mask)
                continue
            for m in teacher.modalities:
                if m not in keep:
                    batch[m] = teacher.standardizers[m].mean[None, :, None].expand_as(batch[m]).clone()
            kept.update(teacher(batch).logits.sigmoid(), batch[LABELS], mask)
    return 100 * float(full.compute()["map"]), 100 * float(kept.compute()["map"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("teachers", nargs="+", help="early-fusion teacher checkpoints (standardising)")
    parser.add_argument("--keep", nargs="+", default=["rgb"], help="the student's modalities")
    args = parser.parse_args()
    for path in args.teachers:
        teacher = load_detector(path).eval()
        everything, kept = test_map(teacher, args.data, args.keep)
        norms = ", ".join(f"{m} {v:.3f}" for m, v in column_norms(teacher).items()) or "(late fusion)"
        what = "its stream's head alone" if getattr(teacher, "fusion", "early") == "late" else "the rest at its mean"
        print(f"{path}: test frame mAP {everything:.2f}; with only {'+'.join(args.keep)} ({what}) "
              f"{kept:.2f}; input-column norm per dimension: {norms}")


if __name__ == "__main__":
    main()
