"""Distillation loss plugins (DESIGN.md §3): the paper's three losses and the baselines.

Each plugin is a :class:`DistillationLoss`, chosen in the experiment YAML by its
``class_path`` (``kd_detect.distill.<Class>``; the module paths such as
``kd_detect.distill.atomic.AtomicContrastive`` work too). Every public plugin class is
importable from here and listed in ``__all__``.
"""

from kd_detect.distill.atomic import AtomicContrastive, InBatchContrastive
from kd_detect.distill.base import DistillationLoss, Weight
from kd_detect.distill.boundary import BoundarySaliency
from kd_detect.distill.crd import CRD
from kd_detect.distill.feature_kd import AttentionTransfer, FeatureMSE, FitNets
from kd_detect.distill.global_relation import GlobalContextualRelation
from kd_detect.distill.logit_kd import LogitKD
from kd_detect.distill.relational import PKT, RKD, SimilarityPreserving

__all__ = [
    "DistillationLoss",
    "Weight",
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
