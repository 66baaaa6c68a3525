"""TeacherModule: a multi-modal detector trained first, then frozen (DESIGN.md §2).

Fusion:

* ``early`` -- encoded modalities concatenated along channels, one head;
* ``mid``   -- a per-modality 1×1 embedding to ``embed_dim``, then summed (``mid_op="sum"``)
  or concatenated (``"concat"``), one head;
* ``late``  -- one head per modality; logits averaged, features concatenated (so the
  teacher's ``HeadOutput.features`` has ``Σ F_m`` channels).

Input regularisation in training, in every fusion: ``modality_dropout`` (whole modalities of
a video, ``kd_detect.models.inputs.modality_dropout``), then ``input_dropout`` (channel
dropout) on each encoded modality, which for early fusion is the detector's channel dropout
on the concatenated input.

A new modality teacher is a subclass that names its modalities and, if it wants,
how a modality is encoded -- nothing else::

    class DepthTeacher(TeacherModule):
        @classmethod
        def default_modalities(cls):
            return ["rgb", "depth"]

        def build_encoder(self, modality, in_dim):
            if modality == "depth":
                return nn.Sequential(nn.Conv1d(in_dim, 256, 1), nn.ReLU()), 256
            return super().build_encoder(modality, in_dim)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kd_detect.data.batch import MASK
from kd_detect.models.heads.base import HeadOutput
from kd_detect.models.inputs import input_dropout, modality_dropout
from kd_detect.modules.detector import DetectorModule

FUSIONS = ("early", "mid", "late")


class TeacherModule(DetectorModule):
    """Multi-modal detector. Args as :class:`DetectorModule`, plus:

    Args:
        fusion: ``"early"``, ``"mid"`` or ``"late"``.
        embed_dim: width of the per-modality embedding in mid fusion.
        mid_op: ``"sum"`` or ``"concat"`` of the mid-fusion embeddings.
        modality_dropout: ``{modality: p}``, each listed modality of a training video zeroed
            with probability ``p`` (ModDrop; e.g. ``{flow: 0.5, pose: 0.5}`` makes the teacher
            also detect from RGB alone). Empty = off.
    """

    def __init__(
        self,
        fusion: str = "early",
        embed_dim: int = 512,
        mid_op: str = "sum",
        modality_dropout: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: every :class:`DetectorModule` argument (head, modalities, lr, ...)."""
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if mid_op not in ("sum", "concat"):
            raise ValueError(f"mid_op must be 'sum' or 'concat', got {mid_op!r}")
        self.fusion, self.embed_dim, self.mid_op = fusion, embed_dim, mid_op
        super().__init__(**kwargs)
        drop = {str(m): float(p) for m, p in (modality_dropout or {}).items()}
        unknown = sorted(set(drop) - set(self.modalities))
        if unknown:
            raise ValueError(f"TeacherModule: modality_dropout names {unknown}, not among the modalities {self.modalities}")
        bad = {m: p for m, p in drop.items() if not 0.0 <= p < 1.0}
        if bad:
            raise ValueError(f"TeacherModule: modality_dropout probabilities must be in [0, 1), got {bad}")
        self.modality_dropout = drop

    @classmethod
    def default_modalities(cls) -> list[str]:
        return ["rgb", "flow"]

    def build_model(self) -> None:
        encoders, dims = {}, {}
        for m in self.modalities:
            encoders[m], dims[m] = self.build_encoder(m, self.modality_dims[m])
        self.encoders = nn.ModuleDict(encoders)
        if self.fusion == "early":
            self.head = self.head_factory(sum(dims.values()), self.num_classes)
        elif self.fusion == "mid":
            self.embeddings = nn.ModuleDict({m: nn.Conv1d(dims[m], self.embed_dim, 1) for m in self.modalities})
            width = self.embed_dim * (len(self.modalities) if self.mid_op == "concat" else 1)
            self.head = self.head_factory(width, self.num_classes)
        else:
            self.heads = nn.ModuleDict({m: self.head_factory(dims[m], self.num_classes) for m in self.modalities})

    @property
    def feature_dim(self) -> int:
        if self.fusion == "late":
            return int(sum(h.feature_dim for h in self.heads.values()))
        return int(self.head.feature_dim)

    def forward(self, batch: dict[str, Any]) -> HeadOutput:
        mask = batch[MASK]
        encoded = self.drop_inputs(self.encode(batch))
        if self.fusion == "early":
            return self.head(torch.cat(list(encoded.values()), dim=1), mask)
        if self.fusion == "mid":
            m = mask.unsqueeze(1).to(next(iter(encoded.values())).dtype)
            embedded = [self.embeddings[k](v) * m for k, v in encoded.items()]
            x = torch.stack(embedded).sum(0) if self.mid_op == "sum" else torch.cat(embedded, dim=1)
            return self.head(x, mask)
        outs = [self.heads[k](v, mask) for k, v in encoded.items()]
        features = torch.cat([o.features for o in outs], dim=1)
        logits = torch.stack([o.logits for o in outs]).mean(0)
        return HeadOutput(features, logits)

    def drop_inputs(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """In training: whole modalities dropped (``modality_dropout``), then channel dropout."""
        if not self.training:
            return encoded
        encoded = modality_dropout(encoded, self.modality_dropout, True)
        return {m: input_dropout(x, self.input_dropout, True) for m, x in encoded.items()}
