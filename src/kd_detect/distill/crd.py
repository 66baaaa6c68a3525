"""CRD-style in-batch contrastive distillation on single steps (DESIGN.md §3, baselines).

``L = −1/N Σ_i log softmax_j(z^S_i·z^F_j / τ)[i]`` over sampled valid steps (Tian et al.,
ICLR 2020, with in-batch negatives instead of a memory bank).
"""

from __future__ import annotations

from kd_detect.distill._common import ProjectorKind
from kd_detect.distill._contrastive import InBatchContrastive
from kd_detect.distill.base import Weight


class CRD(InBatchContrastive):
    """CRD-style contrastive baseline (DESIGN.md §3): the atomic machinery with window 1.

    ``L = −1/N Σ_i log softmax_j(z^S_i·z^F_j / τ)[i]`` where ``z = normalise(g(x_t))`` for
    up to ``max_samples`` valid steps drawn from the batch; positive = teacher embedding of
    the same video and step, negatives = the other sampled teacher steps. CRD's memory bank
    of 16k negatives is replaced by in-batch negatives (optionally gathered across ranks);
    as in CRD both anchors are used by default (``symmetric=True``) and ``tau = 0.07``
    (CRD's ``nce_t``). Negatives from neighbouring steps of the same video are near
    duplicates of the positive, which makes this a harder, noisier task than CRD on images.

    Args:
        weight: loss weight.
        embed_dim: embedding size of the linear/MLP heads.
        projector: ``"linear"`` (CRD) or ``"mlp"``.
        tau: temperature.
        symmetric: average the student→teacher and teacher→student terms.
        max_samples: steps sampled per batch (uniform without replacement, global RNG).
        gather_distributed: gather negatives across DDP ranks.
    """

    def __init__(
        self,
        weight: Weight = 1.0,
        embed_dim: int = 128,
        projector: ProjectorKind = "linear",
        tau: float = 0.07,
        symmetric: bool = True,
        max_samples: int = 1024,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(weight, 1, embed_dim, projector, tau, symmetric, max_samples, gather_distributed)

    @property
    def max_samples(self) -> int:
        """Steps sampled per batch (stored as the shared ``max_atoms``)."""
        return self.max_atoms
