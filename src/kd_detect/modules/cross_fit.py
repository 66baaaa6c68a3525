"""A cross-fitted teacher: K fold teachers, each video read by one that never trained on it.

A teacher distils only on the student's training videos, and those are its own training
videos too. There it has mostly learnt the (noisy) labels: on the synthetic benchmark the
RGB+flow+pose teacher scores 95.6 frame mAP against the training labels and 70.3 on test,
and an RGB-only model 95.5 and 54.9. On the videos the student sees, a strong and a weak
teacher say nearly the same thing, and the student cannot learn from the teacher what it
does not already have from the labels. Held-out predictions are the classic remedy (the
out-of-sample probabilities of confident learning, Northcutt et al. 2021; stacking):

* train K **fold teachers** with the same recipe, fold teacher k on the training videos
  outside fold k (``data.folds: K``, ``data.fold: k``; :func:`~kd_detect.data.feature_data.fold_of`);
* each training video is then read by the fold teacher that did not train on it, so its
  features and logits say what the teacher's modalities show of that video, not what
  its label said.

:class:`CrossFittedTeacher` is that routing. Rule: a video goes to the **first** teacher
(in the listed order) whose recorded training videos (``DetectorModule.training_videos``,
kept in the checkpoint) do not include it; a video no teacher trained on (validation,
test) goes to the first. Every other video, seen by every teacher, is refused by
:meth:`CrossFittedTeacher.check_covers` before training. The fold teachers must agree on
classes, modalities, their dims and the feature dim.

**One feature basis.** The student reads each video's teacher features from one fold
teacher, so a plugin sees several teachers' features. That is harmless for plugins that
read the logits, or the features only through relations among one video's steps
(``teacher_view`` ``"logits"``/``"video"``: global relation, boundary saliency, SP, AT, logit
KD). Plugins that read coordinates (``"space"``: a learned map into the teacher's space,
or features of different videos compared: the atomic contrast's teacher projection,
FitNets, MARS, CRD, RKD, PKT) need the fold teachers to share a basis. Fold teachers
started from **one seed** do: on the synthetic benchmark the same step's features of two
such fold teachers have cosine 0.89 on test videos (0.90 between a fold teacher and the
full teacher), against 0.04–0.07 for teachers started from different seeds, whose linear
CKA is nonetheless as high (0.79–0.87: the same content in a rotated basis).
:attr:`CrossFittedTeacher.shares_one_space` reads the seeds the checkpoints recorded; the
student refuses a ``"space"`` plugin on fold teachers of different seeds.

YAML (a student; the ``experiments/folds/`` files train the fold teachers)::

    model:
      init_args:
        teachers:
          teacher: [runs/folds/synthetic_teacher_fold0/best.ckpt, runs/folds/synthetic_teacher_fold1/best.ckpt,
                    runs/folds/synthetic_teacher_fold2/best.ckpt, runs/folds/synthetic_teacher_fold3/best.ckpt]
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from kd_detect.data.batch import MASK, META, NON_MODALITY_KEYS
from kd_detect.data.teacher_cache import one_seed
from kd_detect.errors import TeacherCompatibilityError
from kd_detect.models.heads.base import HeadOutput
from kd_detect.modules.detector import DetectorModule


def combined_sha256(shas: Sequence[str]) -> str:
    """The identity of an ordered list of teacher checkpoints (routing depends on the order)."""
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


class CrossFittedTeacher(nn.Module):
    """Fold teachers behind one teacher's interface (``classes``, ``modality_dims``,
    ``feature_dim``, ``forward(batch) -> HeadOutput``); see the module docstring."""

    def __init__(self, teachers: Sequence[DetectorModule], sources: Sequence[str]) -> None:
        super().__init__()
        if len(teachers) < 2:
            raise TeacherCompatibilityError(
                f"a cross-fitted teacher needs at least 2 fold teachers, got {len(teachers)} ({list(sources)})"
            )
        first, where = teachers[0], sources[0]
        for t, src in zip(teachers[1:], sources[1:]):
            for what, a, b in (("classes", first.classes, t.classes), ("modalities", first.modalities, t.modalities),
                               ("modality dims", first.modality_dims, t.modality_dims),
                               ("feature dim", first.feature_dim, t.feature_dim)):
                if (list(a) != list(b)) if isinstance(a, (list, tuple)) else (a != b):
                    raise TeacherCompatibilityError(
                        f"fold teachers {where} and {src} differ in their {what} ({a} vs {b}); "
                        "the fold teachers of one cross-fitted teacher share one recipe"
                    )
        unknown = [src for t, src in zip(teachers, sources) if t.training_videos is None]
        if unknown:
            raise TeacherCompatibilityError(
                f"{unknown[0]}: the checkpoint does not record the videos it trained on (written before "
                "kd_detect recorded them); retrain the fold teachers to cross-fit them"
            )
        self.folds = nn.ModuleList(teachers)
        self.sources = [str(s) for s in sources]
        self._seen = [frozenset(t.training_videos or ()) for t in teachers]
        self.classes = list(first.classes)
        self.num_classes = int(first.num_classes)
        self.modalities = list(first.modalities)
        self.modality_dims = dict(first.modality_dims)
        self.feature_dim = int(first.feature_dim)
        self.seeds: list[int | None] = [getattr(t, "seed", None) for t in teachers]

    @property
    def shares_one_space(self) -> bool | None:
        """Whether the fold teachers started from one recorded seed (so their features
        share a basis); ``None`` when a checkpoint did not record its seed."""
        return one_seed(self.seeds)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def route(self, video_id: str) -> int | None:
        """Index of the teacher that reads ``video_id``: the first not trained on it; the
        first when no teacher trained on it; ``None`` when every teacher did."""
        for k, seen in enumerate(self._seen):
            if video_id not in seen:
                return k
        return None

    def check_covers(self, video_ids: Sequence[str], name: str = "teacher") -> None:
        """Refuse, naming the first such video, training videos that every fold teacher saw."""
        seen_by_all = [v for v in video_ids if self.route(v) is None]
        if seen_by_all:
            raise TeacherCompatibilityError(
                f"cross-fitted teacher {name!r}: training video {seen_by_all[0]!r} ({len(seen_by_all)} of "
                f"{len(video_ids)}) was in the training set of every fold teacher ({', '.join(self.sources)}), so none "
                "can read it held out; train fold teacher k with data.folds=K, data.fold=k on the student's data"
            )

    def forward(self, batch: dict[str, Any]) -> HeadOutput:
        ids = list(batch[META]["video_id"])
        routes = [self.route(v) for v in ids]
        missing = [v for v, r in zip(ids, routes) if r is None]
        if missing:
            self.check_covers(missing)
        mask: Tensor = batch[MASK]
        features = logits = None
        for k in sorted(set(routes)):
            rows = [i for i, r in enumerate(routes) if r == k]
            index = torch.tensor(rows, device=mask.device)
            sub = {key: value.index_select(0, index) for key, value in batch.items()
                   if key not in NON_MODALITY_KEYS or key == MASK}
            out = self.folds[k](sub)
            if features is None:
                features = out.features.new_zeros((len(ids), *out.features.shape[1:]))
                logits = out.logits.new_zeros((len(ids), *out.logits.shape[1:]))
            features[index] = out.features
            logits[index] = out.logits
        return HeadOutput(features, logits)
