"""TeacherModule: a multi-modal detector trained first, then frozen (DESIGN.md §2).

Fusion:

* ``early`` -- encoded modalities concatenated along channels, one head;
* ``mid``   -- a per-modality 1×1 embedding to ``embed_dim``, then summed (``mid_op="sum"``)
  or concatenated (``"concat"``), one head;
* ``late``  -- one head per modality; logits averaged, features concatenated (so the
  teacher's ``HeadOutput.features`` has ``Σ F_m`` channels).

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
from kd_detect.modules.detector import DetectorModule

FUSIONS = ("early", "mid", "late")


class TeacherModule(DetectorModule):
    """Multi-modal detector. Args as :class:`DetectorModule`, plus:

    Args:
        fusion: ``"early"``, ``"mid"`` or ``"late"``.
        embed_dim: width of the per-modality embedding in mid fusion.
        mid_op: ``"sum"`` or ``"concat"`` of the mid-fusion embeddings.
    """

    def __init__(self, fusion: str = "early", embed_dim: int = 512, mid_op: str = "sum", **kwargs: Any) -> None:
        """``kwargs``: every :class:`DetectorModule` argument (head, modalities, lr, ...)."""
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if mid_op not in ("sum", "concat"):
            raise ValueError(f"mid_op must be 'sum' or 'concat', got {mid_op!r}")
        self.fusion, self.embed_dim, self.mid_op = fusion, embed_dim, mid_op
        super().__init__(**kwargs)

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
        encoded = self.encode(batch)
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
