"""Pilot (a measurement, not a package feature): distil at a middle layer of PDAN instead of
its last one.

On its training videos the teacher's last layer mostly restates their labels (the teacher
trained on them; docs/results.md, "The cross-fitted teacher"), and the student reads the
same labels. Earlier layers are further from the classifier: they carry more of what flow
and pose show (the phases of an action, where they change) and less of the fit to the
labels. Hint layers in the middle of the network are also what FitNets distils. This pilot
trains exactly as ``kd-detect fit`` does, with the features every distillation plugin
sees -- the student's and the teacher's, both PDAN -- taken after residual block ``K``
(``K = 0``: after the input projection; ``K = num_layers``: the last block, the package's
default, which reproduces an unpatched fit bit for bit). The logits, and so the detection
loss and every metric, are the unchanged last layer's::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/pilots/feature_layer.py 2 -- fit \
        --config experiments/synthetic_kd.yaml --seed_everything=0 --data.path=data/synthetic.h5 \
        --model.init_args.teachers.teacher=runs/synthetic_teacher/best.ckpt \
        --trainer.default_root_dir=runs/pilot/layer2_s0 --test_after_fit=true

Measured figures: docs/results.md, "Distilling at a middle layer".
"""

from __future__ import annotations

import sys

from torch import Tensor

from kd_detect.cli import main
from kd_detect.models.heads import pdan
from kd_detect.models.heads.base import HeadOutput, expand_mask


def patched(layer: int):
    def forward(self: pdan.PDAN, x: Tensor, mask: Tensor) -> HeadOutput:
        pdan.check_head_input(self, x, mask)
        if not 0 <= layer <= len(self.blocks):
            raise SystemExit(f"feature_layer.py: K must be in 0..{len(self.blocks)}, got {layer}")
        m = expand_mask(mask, x)
        h = self.input_conv(pdan.masked_input(x, mask)) * m
        features = h
        for i, block in enumerate(self.blocks, 1):
            h = block(h, m)
            if i == layer:
                features = h
        return HeadOutput(features, self.classifier(h) * m)
    return forward


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--" or not sys.argv[1].isdigit():
        sys.exit("usage: feature_layer.py K -- <kd-detect arguments>  (K: a PDAN block, 0 .. num_layers)")
    pdan.PDAN.forward = patched(int(sys.argv[1]))
    sys.exit(main(sys.argv[3:]))
