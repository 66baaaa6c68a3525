"""Distillation loss plugins (DESIGN.md §3): the paper's three losses and the baselines.

Each plugin is a :class:`DistillationLoss` registered under a short name in
:data:`REGISTRY` and chosen in the experiment YAML by ``class_path``.
"""

from kd_detect.distill.atomic import AtomicContrastive, InBatchContrastive
from kd_detect.distill.base import REGISTRY, DistillationLoss, register
from kd_detect.distill.boundary import BoundarySaliency
from kd_detect.distill.crd import CRD
from kd_detect.distill.feature_kd import AttentionTransfer, FeatureMSE, FitNets
from kd_detect.distill.global_relation import GlobalContextualRelation
from kd_detect.distill.logit_kd import LogitKD
from kd_detect.distill.relational import PKT, RKD, SimilarityPreserving

__all__ = [
    "REGISTRY",
    "DistillationLoss",
    "register",
    "AtomicContrastive",
    "InBatchContrastive",
    "GlobalContextualRelation",
    "BoundarySaliency",
    "LogitKD",
    "FitNets",
    "FeatureMSE",
    "AttentionTransfer",
    "SimilarityPreserving",
    "RKD",
    "PKT",
    "CRD",
]
