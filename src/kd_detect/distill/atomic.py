"""Atomic-level contrastive distillation, ``L_atomic`` (DESIGN.md §3).

Atoms are masked averages over consecutive non-overlapping windows of ``w`` *valid*
steps; with ``z = normalise(g(atom))`` the loss is the in-batch InfoNCE

    L = −1/N Σ_k log( exp(z^S_k·z^F_k/τ) / Σ_{j ∈ {k} ∪ A_k} exp(z^S_k·z^F_j/τ) ),

``A_k`` the negatives of atom ``k`` (all other atoms of the batch by default). The machinery
(shared with the CRD baseline) is in :mod:`kd_detect.distill._contrastive`.
"""

from __future__ import annotations

from kd_detect.distill._common import ProjectorKind
from kd_detect.distill._contrastive import InBatchContrastive, NegativesKind, atom_index, window_average
from kd_detect.distill.base import Weight

__all__ = ["AtomicContrastive", "InBatchContrastive", "atom_index", "window_average"]


class AtomicContrastive(InBatchContrastive):
    """Atomic-level contrastive loss (DESIGN.md §3, ``L_atomic``).

    ``L = −1/N Σ_k log softmax_{j ∈ {k} ∪ A_k}(z^S_k·z^F_j / τ)[k]``: atoms are masked
    averages of ``window`` consecutive valid steps, ``z = normalise(g(atom))`` with learned
    heads ``g_s: F_s→E``, ``g_t: F_t→E``; the positive of a student atom is the teacher
    atom of the same video and window; the negatives ``A_k`` are the other teacher atoms
    of the batch, restricted by the two options below.

    Args:
        weight: ``λ_a`` (a number or ``"auto"``, see :mod:`kd_detect.distill.base`).
        window: steps per atom ``w`` (1 = per step); a trailing partial window is an atom.
        embed_dim: ``E``.
        projector: ``"linear"`` or ``"mlp"`` (Linear–ReLU–Linear).
        tau: InfoNCE temperature.
        symmetric: also add the teacher→student term (the two are averaged).
        max_atoms: at most this many atoms per batch (uniform without replacement from the
            torch global RNG, so seeding makes it reproducible); ``<= 0`` keeps all.
        gather_distributed: under DDP (world size > 1) gather teacher atoms from all ranks
            as negatives (the local chunk keeps its gradient; ranks may hold different
            atom counts).
        exclude_same_label: remove false negatives: with ``Y_k ⊆ {1..C}`` the classes whose
            training label is on at some step of atom ``k``'s window, ``A_k`` drops every
            ``j`` with ``Y_j = Y_k`` (same action content, so not a negative; background
            atoms, ``Y = ∅``, are never each other's negatives). Uses the labels the
            student passes (the plugin's ``needs_labels``). Default ``False`` (the paper).
        negatives: ``"batch"`` (default, the paper): every other atom of the batch;
            ``"video"``: only the other atoms of the anchor's own video, so the contrast
            cannot be won by recognising the video (scene, drift) -- the video-identity
            shortcut -- and must be won by what changes within a video. Not combinable
            with ``gather_distributed``.

    YAML::

        atomic:
          class_path: kd_detect.distill.AtomicContrastive
          init_args: {weight: 0.1, exclude_same_label: true, negatives: video}

    Batch size matters: a student atom is contrasted against the other ``N − 1`` atoms of
    its (per-GPU) batch, ``N ≤ max_atoms``; the loss is bounded by ``log N`` and the task gets
    harder as ``N`` grows, so loss values and the best ``tau`` depend on the per-GPU batch
    size and window. Without ``gather_distributed`` each GPU only sees its own negatives
    (``N`` per GPU); with it there are ``≈ world_size · N`` negatives, as on one big GPU.
    The cost is ``O(N² E)`` per step (``O(N² C)`` more with ``exclude_same_label``).
    """

    def __init__(
        self,
        weight: Weight = 1.0,
        window: int = 4,
        embed_dim: int = 128,
        projector: ProjectorKind = "linear",
        tau: float = 0.1,
        symmetric: bool = False,
        max_atoms: int = 1024,
        gather_distributed: bool = False,
        exclude_same_label: bool = False,
        negatives: NegativesKind = "batch",
    ) -> None:
        super().__init__(
            weight, window, embed_dim, projector, tau, symmetric, max_atoms, gather_distributed,
            exclude_same_label, negatives,
        )
