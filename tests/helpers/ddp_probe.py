"""A callback the DDP test adds to a student run: on every rank, at the end of fit, it
records whether each frozen teacher is still in eval mode, has no trainable parameter,
and holds exactly the weights of its checkpoint (DDP must never broadcast or reduce into
it), and whether the teacher is hidden from DDP's wrapped module."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pytorch_lightning import Callback


class TeacherProbe(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        report = {"world_size": trainer.world_size, "teachers": {}}
        wrapped = trainer.strategy.model  # DistributedDataParallel under ddp
        ddp_params = {id(p) for p in wrapped.parameters()}
        for name, teacher in pl_module.teachers.items():
            path = pl_module.hparams["teachers"][name]
            saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
            state = teacher.state_dict()
            report["teachers"][name] = {
                "eval": not any(m.training for m in teacher.modules()),
                "frozen": not any(p.requires_grad for p in teacher.parameters()),
                "identical": set(saved) == set(state) and all(torch.equal(saved[k], state[k].cpu()) for k in saved),
                "outside_ddp": not any(id(p) in ddp_params for p in teacher.parameters()),
            }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(report))
